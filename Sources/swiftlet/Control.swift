import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement
import SwiftletHost

/// `--balloon [size=MiB][,deflate-on-oom=on][,free-page-reporting=on][,stats=SECONDS]`; `--balloon on` for the
/// defaults (no balloon at boot, no options).
struct BalloonOption: ExpressibleByArgument {
    var configuration = MemoryBalloonConfiguration()

    init?(argument: String) {
        for option in argument.split(separator: ",") where option != "on" {
            let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            switch (pair[0], pair[1]) {
            case ("size", let text):
                guard let mib = UInt64(text), mib < 1 << 40 else { return nil }
                configuration.targetSize = mib << 20
            case ("deflate-on-oom", "on"): configuration.deflateOnOOM = true
            case ("deflate-on-oom", "off"): configuration.deflateOnOOM = false
            case ("free-page-reporting", "on"): configuration.freePageReporting = true
            case ("free-page-reporting", "off"): configuration.freePageReporting = false
            case ("stats", let text):
                guard let seconds = UInt32(text), seconds <= 86_400 else { return nil }
                configuration.statisticsInterval = seconds
            case ("packed", "on"): configuration.packedRing = true
            case ("packed", "off"): configuration.packedRing = false
            default: return nil
            }
        }
    }
}

/// The control protocol, on the Unix socket `--control-socket` (or `--balloon-socket`) names: one command per line,
/// one answer line each, starting with `ok` or `error`.
///
///     set MIB   ask the guest for a balloon of MIB MiB           -> ok target_mib=MIB
///     get       sizes and counters                               -> ok target_mib=T actual_mib=A ...
///     stats     the guest's latest memory statistics (bytes)     -> ok age_ms=N total_memory=... free_memory=...
///     pause     park the vCPUs and the device thread             -> ok paused
///     resume    let them go on                                   -> ok running
///     snapshot STATE MEMORY [diff]   save the paused VM to two files (diff: only the pages written since
///               the last snapshot)                             -> ok state_bytes=N memory_bytes=M written_bytes=W ms=T
///
/// Paths are taken as they are (no spaces); a relative one is relative to the VM's working directory.
enum VMControl {
    static let usage = "commands: set MIB, get, stats, pause, resume, snapshot STATE MEMORY [diff]"

    static func answer(_ line: String, vm: MicroVM) -> String {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        switch words.first {
        case "pause":
            guard words.count == 1 else { return "error usage: pause" }
            do { try vm.pause() } catch { return "error \(error.message)" }
            return "ok paused"
        case "resume":
            guard words.count == 1 else { return "error usage: resume" }
            do { try vm.resume() } catch { return "error \(error.message)" }
            return "ok running"
        case "snapshot":
            guard words.count == 3 || (words.count == 4 && ["diff", "full"].contains(words[3])) else {
                return "error usage: snapshot STATE MEMORY [diff] (two file paths without spaces)"
            }
            let kind: SnapshotKind = words.count == 4 && words[3] == "diff" ? .diff : .full
            let started = monotonicNanoseconds()
            do {
                let written = try vm.snapshot(to: SnapshotPaths(state: words[1], memory: words[2]), kind: kind)
                let ms = Double(monotonicNanoseconds() - started) / 1e6
                return "ok state_bytes=\(written.stateBytes) memory_bytes=\(written.memoryBytes) written_bytes=\(written.memoryWrittenBytes) ms=\((ms * 1000).rounded() / 1000)"
            } catch {
                return "error \(error.message)"
            }
        case "set":
            guard words.count == 2, let mib = UInt64(words[1]), mib < 1 << 40 else { return "error usage: set MIB (a whole number of MiB)" }
            do { try vm.setBalloonTarget(bytes: mib << 20) } catch { return "error \(error.message)" }
            return "ok target_mib=\(mib)"
        case "get":
            guard let status = vm.balloonStatus() else { return "error the VM has no balloon" }
            return "ok target_mib=\(status.targetBytes >> 20) actual_mib=\(status.actualBytes >> 20)"
                + " target_pages=\(status.targetPages) actual_pages=\(status.actualPages)"
                + " inflated_pages=\(status.inflatedPages) deflated_pages=\(status.deflatedPages)"
                + " reported_kib=\(status.reportedBytes >> 10) released_kib=\(status.releasedBytes >> 10)"
                + " unreleased_kib=\(status.unreleasedBytes >> 10) ignored_pages=\(status.ignoredPages)"
                + " release_calls=\(status.releaseCalls)"
        case "stats":
            guard let status = vm.balloonStatus() else { return "error the VM has no balloon" }
            guard let statistics = status.statistics else {
                return "error no statistics yet (start with --balloon stats=SECONDS, and give the guest's driver time to send them)"
            }
            let age = (monotonicNanoseconds() - statistics.receivedAt) / 1_000_000
            return "ok age_ms=\(age) " + statistics.fields.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
        default:
            return "error unknown command \"\(line.prefix(40))\" (\(usage))"
        }
    }

    /// Serves the protocol at `path` for `vm` until `stop()`; the socket file goes with it.
    static func serve(at path: String, vm: MicroVM) throws(SwiftletError) -> UnixLineServer {
        try UnixLineServer(path: path, prologue: {
            do {
                try vm.confineCurrentThread(.control)
                return true
            } catch {
                Run.report("error: \(error)")
                return false
            }
        }) { line in answer(line, vm: vm) }
    }
}

/// `swiftlet balloon SOCKET COMMAND...`: one command to a running VM's control socket.
struct BalloonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balloon",
        abstract: "Send one command to a running VM's control socket: its balloon, pause, resume, snapshot.",
        discussion: """
            SOCKET is what the VM was started with (swiftlet run --balloon ... --balloon-socket SOCKET). Commands: \
            `set MIB` asks the guest for a balloon of MIB MiB (memory given back to the host; 0 gives it all back \
            to the guest); `get` prints the target and actual sizes and what the device released; `stats` prints \
            the guest's latest memory statistics (with --balloon stats=SECONDS); `pause` and `resume` stop and \
            start the guest; `snapshot STATE MEMORY [diff]` saves a paused one (`swiftlet snapshot` does all three). \
            Prints the answer line; exits 1 when it starts with "error".
            """,
        aliases: ["control"])

    @Argument(help: ArgumentHelp("The VM's control socket.", valueName: "socket"))
    var socket: String

    @Argument(help: ArgumentHelp("set MIB | get | stats | pause | resume | snapshot STATE MEMORY [diff]", valueName: "command"))
    var command: [String]

    func run() throws {
        let stream = try LineStream(connectingTo: socket)
        do { try stream.send(command.joined(separator: " ")) } catch {
            throw SwiftletError(.io, "cannot send to \(socket)", cause: error)
        }
        guard let answer = stream.receiveLine() else { throw SwiftletError(.io, "\(socket) closed without an answer") }
        print(answer)
        if answer.hasPrefix("error") { throw ExitCode(1) }
    }
}
