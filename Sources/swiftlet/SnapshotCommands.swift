import ArgumentParser
import Glibc
import Swiftlet
import SwiftletConfinement
import SwiftletHost

/// `swiftlet snapshot SOCKET --state FILE --memory FILE`: pauses a running VM through its control socket, saves it,
/// and leaves it paused (as Firecracker does) or resumes it.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Save a running VM to a state file and a memory file, through its control socket.",
        discussion: """
            SOCKET is the VM's control socket (swiftlet run --control-socket SOCKET). The VM is paused (its vCPUs and \
            device thread park), saved, and then stays paused unless --resume is given; `swiftlet control SOCKET \
            resume` lets it go on later. `swiftlet restore --state FILE --memory FILE` starts it again, or a clone of \
            it. Paths are the VM's: relative ones are relative to its working directory. Prints the control \
            socket's answer (the sizes written and the time taken); exits 1 on an error. With --diff (a VM run \
            with --track-dirty-pages), the memory file holds only the pages written since the VM's last snapshot \
            or its restore: `swiftlet snapshot-merge` puts them onto that snapshot's memory file before a restore.
            """)

    @Argument(help: ArgumentHelp("The VM's control socket.", valueName: "socket"))
    var socket: String

    @Flag(name: .long, help: "A diff snapshot: only the pages written since the last snapshot (needs run --track-dirty-pages).")
    var diff = false

    @Option(name: .long, help: ArgumentHelp("The state file to write (vCPUs, devices, configuration; kilobytes).", valueName: "path"))
    var state: String

    @Option(name: .long, help: ArgumentHelp("The memory file to write (guest RAM, sparse: untouched pages are holes).", valueName: "path"))
    var memory: String

    @Flag(name: .long, help: "Let the VM run again once it is saved.")
    var resume = false

    func validate() throws {
        for (option, path) in [("--state", state), ("--memory", memory)] where path.isEmpty || path.contains(" ") || path.contains("\n") {
            throw ValidationError("\(option) \(path): give a path without spaces or newlines (the control protocol is a line of words)")
        }
        if state == memory { throw ValidationError("--state and --memory must be two different files") }
    }

    func run() throws {
        let stream = try LineStream(connectingTo: socket)
        func ask(_ line: String) throws -> String {
            do { try stream.send(line) } catch { throw SwiftletError(.io, "cannot send to \(socket)", cause: error) }
            guard let answer = stream.receiveLine() else { throw SwiftletError(.io, "\(socket) closed without an answer") }
            guard answer.hasPrefix("ok") else {
                Run.report(answer.hasPrefix("error ") ? "error: \(answer.dropFirst(6))" : answer)
                throw ExitCode(1)
            }
            return answer
        }
        _ = try ask("pause")
        print(try ask("snapshot \(state) \(memory)" + (diff ? " diff" : "")))
        if resume { _ = try ask("resume") }
    }
}

/// `swiftlet restore --state FILE --memory FILE`: a VM restored from a snapshot, running where it was saved.
struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a VM from a snapshot (swiftlet snapshot, or Firecracker's /snapshot/create).",
        discussion: """
            The guest goes on where it was saved: its memory is the memory file mapped copy-on-write (pages load \
            when it touches them, and what it writes stays in this process, so any number of clones can share one \
            snapshot), its vCPUs and devices are set back as they were. The disks, TAPs and vsock socket are \
            opened again by the paths the snapshot saved, unless the options below give others: a clone needs its \
            own vsock socket and TAP, and its own copy of a writable disk (the image is locked by whoever has it \
            open). Open vsock connections do not survive: the guest gets a TRANSPORT_RESET and its agent listens \
            again. Exit status as for `swiftlet run`.
            """)

    @Option(name: .long, help: ArgumentHelp("The snapshot's state file.", valueName: "path"))
    var state: String

    @Option(name: .long, help: ArgumentHelp("The snapshot's memory file.", valueName: "path"))
    var memory: String

    @Option(name: .long, help: ArgumentHelp("Where the guest console goes: stdio, none, or a file (as for run).", valueName: "stdio|none|path"))
    var console = "stdio"

    @Option(name: .long, help: ArgumentHelp("Disk INDEX (0 for the first) uses the image at PATH; repeat for more.", valueName: "index=path"))
    var disk: [String] = []

    @Option(name: .long, help: ArgumentHelp("NIC INDEX uses the TAP NAME (created, and removed at exit, when it does not exist); repeat for more.", valueName: "index=name"))
    var tap: [String] = []

    @Option(name: .long, help: ArgumentHelp("NIC INDEX's device reports this MAC address. Linux's virtio-net driver reads it only when it probes the device, so a running guest keeps the MAC it had: set it there too (ip link set eth0 address MAC).", valueName: "index=xx:xx:xx:xx:xx:xx"))
    var mac: [String] = []

    @Option(name: .long, help: ArgumentHelp("The vsock device's host socket (a clone's own), instead of the saved one.", valueName: "path"))
    var vsockSocket: String?

    @Option(name: .long, help: ArgumentHelp("The vsock device's guest CID, instead of the saved one (the guest reads it again after the restore's TRANSPORT_RESET).", valueName: "cid"))
    var vsockCid: UInt64?

    @Flag(name: .long, help: "Stay paused after the restore: `swiftlet control SOCKET resume` on the control socket lets the guest go on.")
    var paused = false

    @Flag(name: .long, help: "Track the pages the guest writes, so that `swiftlet snapshot --diff` can save only those (as for run).")
    var trackDirtyPages = false

    @Option(name: .long, help: ArgumentHelp("A Unix socket for controlling the VM (pause, resume, snapshot, the balloon); removed at exit.", valueName: "path"))
    var controlSocket: String?

    @Option(name: .long, help: ArgumentHelp("Seccomp filters, as for run.", valueName: "on|log|off"))
    var seccomp: SeccompMode?

    @Flag(name: .long, help: "Print, on stderr, the CLOCK_MONOTONIC time of the first KVM_RUN (for start-up benchmarks).")
    var traceStartup = false

    @Flag(name: .long, help: "Print, on stderr at exit, per-device counts of notifications, interrupts and requests.")
    var stats = false

    /// `INDEX=VALUE` options, by index.
    static func indexed(_ values: [String], option: String) throws -> [Int: String] {
        var result: [Int: String] = [:]
        for value in values {
            let pair = value.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2, let index = Int(pair[0]), index >= 0, !pair[1].isEmpty else {
                throw ValidationError("--\(option) \(value): expected INDEX=VALUE, such as 0=\(option == "mac" ? "52:54:00:00:00:02" : "...")")
            }
            result[index] = pair[1]
        }
        return result
    }

    func run() async throws {
        let start = monotonicNanoseconds()
        let disks = try Self.indexed(disk, option: "disk"), taps = try Self.indexed(tap, option: "tap")
        var macs: [Int: [UInt8]] = [:]
        for (index, text) in try Self.indexed(mac, option: "mac") {
            let bytes = text.split(separator: ":").compactMap { UInt8($0, radix: 16) }
            guard bytes.count == 6, text.split(separator: ":").count == 6 else { throw ValidationError("--mac \(index)=\(text) is not a MAC address") }
            macs[index] = bytes
        }
        let (consoleSetting, consoleLimit) = try MachineOptions.console(console)
        let snapshot: MicroVMSnapshot
        do { snapshot = try MicroVMSnapshot(SnapshotPaths(state: state, memory: memory)) } catch { fail(error.description) }
        let saved = snapshot.configuration
        for (option, indices, count) in [("--disk", Array(disks.keys), saved.disks.count), ("--tap", Array(taps.keys), saved.networks.count),
                                         ("--mac", Array(macs.keys), saved.networks.count)] {
            if let bad = indices.first(where: { $0 >= count }) {
                fail("\(option) \(bad)=...: the snapshot's machine has \(count) \(option == "--disk" ? "disks" : "NICs") (indices 0 to \(count - 1))")
            }
        }
        if (vsockSocket != nil || vsockCid != nil) && saved.vsock == nil { fail("--vsock-socket and --vsock-cid need a snapshot with a vsock device; this one has none") }
        let seccompMode = seccomp
        let trace = traceStartup
        let track = trackDirtyPages
        let vm: MicroVM
        do {
            vm = try await MicroVM.restore(from: snapshot, resume: !paused) { configuration in
                configuration.console = consoleSetting
                if let consoleLimit { configuration.consoleFileMaximumSize = consoleLimit }
                for (index, path) in disks { configuration.disks[index].path = path }
                for (index, name) in taps { configuration.networks[index].tap = name }
                for (index, bytes) in macs { configuration.networks[index].mac = bytes }
                if let vsockSocket { configuration.vsock?.socketPath = vsockSocket }
                if let vsockCid { configuration.vsock?.guestCID = vsockCid }
                if let seccompMode { configuration.seccomp = seccompMode }
                configuration.trackDirtyPages = track
                configuration.confineProcess = true
                if trace {
                    configuration.onFirstRun = { now in Run.report("first-kvm-run monotonic_ns=\(now) after_main_ns=\(now - start)") }
                }
            }
        } catch {
            fail(error.description)
        }
        let signals = try SignalForwarder { _ in Task { await vm.stop() } }
        defer { signals.cancel() }
        var control: UnixLineServer?
        if let controlSocket {
            do { control = try VMControl.serve(at: controlSocket, vm: vm) } catch {
                await vm.stop()
                fail(error.description)
            }
        }
        let exit = await vm.wait()
        control?.stop()
        if stats { Run.reportStatistics(vm, scheduling: vm.configuration.deviceScheduling) }
        Run.end(exit)
    }

    private func fail(_ message: String) -> Never {
        Run.report("error: " + message)
        Glibc.exit(1)
    }
}

/// `swiftlet snapshot-merge`: a diff snapshot's pages put onto the memory file of the snapshot before it.
struct SnapshotMerge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot-merge",
        abstract: "Merge a diff snapshot's memory onto its base, making the full memory file it restores from.",
        discussion: """
            A diff snapshot (swiftlet snapshot --diff, Firecracker's snapshot_type Diff) writes only the pages the \
            guest and its devices wrote since the VM's last snapshot (or its restore). BASE is that snapshot's \
            memory file, full (a full snapshot's, or one earlier diffs were merged onto, in order). OUTPUT is \
            written as a sparse copy of BASE with the diff's pages over it; then `swiftlet restore --state STATE \
            --memory OUTPUT` restores the diff snapshot. OUTPUT may be BASE itself, to merge in place (as \
            Firecracker's rebase-snap does), but only when no VM restored from BASE still runs: such a VM maps \
            BASE and would see its pages change. Prints what was copied; exits 1 on an error.
            """)

    @Option(name: .long, help: ArgumentHelp("The diff snapshot's state file (it lists the pages its memory file holds).", valueName: "path"))
    var state: String

    @Option(name: .long, help: ArgumentHelp("The diff snapshot's memory file.", valueName: "path"))
    var diff: String

    @Option(name: .long, help: ArgumentHelp("The full memory file of the snapshot the diff was taken after.", valueName: "path"))
    var base: String

    @Option(name: .long, help: ArgumentHelp("The full memory file to write (BASE itself merges in place).", valueName: "path"))
    var output: String

    func run() throws {
        do {
            let snapshot = try MicroVMSnapshot(SnapshotPaths(state: state, memory: diff))
            let merged = try snapshot.mergeDiff(base: base, output: output)
            print("ok copied_bytes=\(merged.copiedBytes) merged_bytes=\(merged.mergedBytes) output=\(output)")
        } catch {
            Run.report("error: \(error.description)")
            throw ExitCode(1)
        }
    }
}
