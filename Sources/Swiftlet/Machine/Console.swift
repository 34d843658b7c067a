import Glibc
import Synchronization
import SwiftletDevices
import SwiftletHost

/// The UART's output: a file descriptor (stdout or a console file), or nowhere. A console file stops growing at its
/// cap: what the guest writes past it is counted and dropped, after one line in the file that says so.
final class ConsoleSink: SerialOutput {
    private let descriptor: OwnedFileDescriptor?
    private let raw: Int32
    /// The cap of a console file; nil for stdout and for nowhere.
    let limit: UInt64?
    /// Bytes the guest wrote, those past the cap included (vCPUs write concurrently: Serial calls `write` unlocked).
    private let offered = Atomic<UInt64>(0)

    init(configuration: MachineConfiguration.Console, fileLimit: UInt64) throws(SwiftletError) {
        switch configuration {
        case .stdio:
            descriptor = nil
            raw = STDOUT_FILENO
            limit = nil
        case .none:
            descriptor = nil
            raw = -1
            limit = nil
        case .file(let path):
            do {
                let owned = try OwnedFileDescriptor(opening: path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
                descriptor = owned
                raw = owned.rawValue
                limit = fileLimit
            } catch {
                throw SwiftletError(.invalidConfiguration, "cannot open console file \(path)", cause: error)
            }
        }
    }

    /// Bytes that reached the output, and bytes dropped past the file's cap.
    var statistics: ConsoleStatistics {
        let total = offered.load(ordering: .relaxed)
        guard let limit else { return ConsoleStatistics(written: raw >= 0 ? total : 0, dropped: 0) }
        return ConsoleStatistics(written: min(total, limit), dropped: total > limit ? total - limit : 0)
    }

    func write(_ byte: UInt8) {
        guard raw >= 0 else { return }
        let total = offered.wrappingAdd(1, ordering: .relaxed).newValue
        if let limit, total > limit {
            if total == limit + 1 {
                let notice = Array("\n[swiftlet: the console file reached its cap of \(limit) bytes; the guest's further output is dropped]\n".utf8)
                _ = notice.withUnsafeBytes { Glibc.write(raw, $0.baseAddress, $0.count) }
            }
            return
        }
        var byte = byte
        _ = Glibc.write(raw, &byte, 1)
    }
}

/// Copies host stdin to the guest's UART on its own thread, until stopped. Ctrl-A then x stops the VM, as in QEMU.
final class ConsoleInput: Sendable {
    private let stop: EventFd
    private let thread: HostThread
    let terminal: RawTerminalMode

    /// `prologue` runs first on the input thread (its seccomp filter); when it returns false, the thread ends.
    init(serial: Serial, prologue: @escaping @Sendable () -> Bool, onQuit: @escaping @Sendable () -> Void) throws(SwiftletError) {
        do {
            stop = try EventFd()
        } catch {
            throw SwiftletError(.systemCall, "cannot create the console eventfd", cause: error)
        }
        terminal = RawTerminalMode(fd: STDIN_FILENO)
        let stop = self.stop
        let interactive = terminal.isRaw
        do {
            thread = try HostThread(name: "console-in") {
                guard prologue() else { return }
                ConsoleInput.pump(serial: serial, stop: stop, interactive: interactive, onQuit: onQuit)
            }
        } catch {
            terminal.restore()
            throw SwiftletError(.systemCall, "cannot start the console thread", cause: error)
        }
    }

    private static func pump(serial: Serial, stop: EventFd, interactive: Bool, onQuit: @Sendable () -> Void) {
        var buffer = [UInt8](repeating: 0, count: 512)
        var escape = false
        var stdinOpen = true
        while true {
            var fds = [pollfd(fd: stop.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)]
            let room = serial.freeSpace
            let watched = (stdinOpen && room > 0) ? 2 : 1
            let ready = poll(&fds, nfds_t(watched), room > 0 || !stdinOpen ? -1 : 10)
            if ready < 0 && errno != EINTR { return }
            if fds[0].revents != 0 { return }
            guard watched == 2, fds[1].revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, min(room, $0.count)) }
            if count <= 0 {
                if count == 0 || (errno != EINTR && errno != EAGAIN) { stdinOpen = false }
                continue
            }
            guard interactive else {
                serial.receive(buffer[0..<count])
                continue
            }
            // Ctrl-A x quits; Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A followed by anything else sends both.
            var bytes: [UInt8] = []
            bytes.reserveCapacity(count)
            for byte in buffer[0..<count] {
                if escape {
                    escape = false
                    if byte == UInt8(ascii: "x") || byte == UInt8(ascii: "X") { onQuit(); return }
                    bytes.append(0x01)
                    if byte != 0x01 { bytes.append(byte) }
                } else if byte == 0x01 {
                    escape = true
                } else {
                    bytes.append(byte)
                }
            }
            serial.receive(bytes)
        }
    }

    func shutdown() {
        stop.signal()
        thread.join()
        terminal.restore()
    }
}
