import Glibc
import SwiftletHost
@testable import SwiftletFirecracker
import Testing

@Suite struct FirecrackerOptionsTests {
    private func usageError(_ arguments: [String]) -> String? {
        do throws(FirecrackerOptions.UsageError) {
            _ = try FirecrackerOptions.parse(arguments)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func defaultsAreFirecrackers() throws {
        let options = try FirecrackerOptions.parse([])
        #expect(options.apiSocket == "/run/firecracker.socket")
        #expect(options.id == "anonymous-instance")
        #expect(options.configFile == nil && !options.noAPI && !options.bootTimer && !options.describe)
        #expect(options.seccompFilters)
    }

    @Test func takesEveryOptionInBothSpellings() throws {
        let options = try FirecrackerOptions.parse([
            "--api-sock", "/tmp/a.sock", "--config-file=/tmp/c.json", "--no-api", "--id", "vm-7", "--boot-timer",
            "--level", "Debug", "--log-path=/tmp/log", "--metrics-path", "/tmp/metrics", "--seccomp-level", "2", "--describe",
        ])
        #expect(options.apiSocket == "/tmp/a.sock")
        #expect(options.configFile == "/tmp/c.json")
        #expect(options.noAPI && options.bootTimer && options.describe)
        #expect(options.id == "vm-7")
        #expect(options.level == "Debug" && options.logPath == "/tmp/log" && options.metricsPath == "/tmp/metrics")
        #expect(options.seccompLevel == 2 && options.seccompFilters)
    }

    @Test func seccompLevelsMapOntoOurs() throws {
        #expect(try !FirecrackerOptions.parse(["--seccomp-level", "0"]).seccompFilters)
        #expect(try FirecrackerOptions.parse(["--seccomp-level=1"]).seccompFilters)
        #expect(try !FirecrackerOptions.parse(["--no-seccomp"]).seccompFilters)
        #expect(usageError(["--seccomp-level", "3"]) == "--seccomp-level 3 is not 0, 1 or 2")
        #expect(usageError(["--seccomp-level", "x"]) == "--seccomp-level x is not 0, 1 or 2")
    }

    @Test func helpAndVersionNeedNothingElse() throws {
        #expect(try FirecrackerOptions.parse(["-h"]).help)
        #expect(try FirecrackerOptions.parse(["--no-api", "--help"]).help) // --no-api alone would be refused
        #expect(try FirecrackerOptions.parse(["--version"]).version)
        let help = FirecrackerOptions.help(program: "firecracker")
        for name in ["--api-sock <path>", "--config-file <path>", "--no-api", "--id <id>", "--boot-timer", "--level <level>",
                     "--log-path <path>", "--metrics-path <path>", "--seccomp-level <0|1|2>", "--no-seccomp", "--describe"] {
            #expect(help.contains("  " + name + "\n"), "help lists \(name)")
        }
        #expect(FirecrackerOptions.versionLine.hasPrefix("Firecracker v\(FirecrackerVMM.apiVersion) "))
    }

    @Test func refusesWhatItCannotRunAndSaysWhich() {
        #expect(usageError(["--no-api"]) == "--no-api needs --config-file: without the API, the configuration file is the only way to describe the microVM")
        #expect(usageError(["--describe"]) == "--describe needs --config-file: the machine to describe")
        #expect(usageError(["--api-sock"]) == "--api-sock needs a value (path)")
        #expect(usageError(["--api-sock="]) == "--api-sock needs a value (path), not an empty one")
        #expect(usageError(["--no-api=yes"]) == "--no-api is a flag and takes no value")
        #expect(usageError(["--mmds-size-limit", "10"]) == "unknown option '--mmds-size-limit' (--help lists the options Swiftlet's Firecracker front end takes)")
        #expect(usageError(["/tmp/a.sock"]) == "unexpected argument '/tmp/a.sock': Firecracker's command line takes only options (--help lists them)")
        #expect(usageError(["--id", "a", "--id", "b"]) == "--id is given twice")
        #expect(usageError(["--id", "has space"]) == "--id must be 1 to 64 letters, digits and hyphens, as Firecracker's")
        #expect(usageError(["--id", String(repeating: "a", count: 65)]) == "--id must be 1 to 64 letters, digits and hyphens, as Firecracker's")
        #expect(usageError(["--id", String(repeating: "a", count: 64)]) == nil)
    }
}

@Suite struct APISocketTests {
    private func temporaryPath() -> String { "/tmp/swiftlet-apisocket-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

    private func connects(to path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    private func bindError(_ path: String) -> String? {
        do throws(SwiftletError) {
            try APISocket.bind(path: path).discard()
            return nil
        } catch {
            return "\(error.code.rawValue): \(error.message)"
        }
    }

    @Test func acceptsConnectionsOnceBoundAndDiscardRemovesIt() throws {
        let path = temporaryPath()
        let socket = try APISocket.bind(path: path)
        #expect(connects(to: path), "a client's connect succeeds before any server runs")
        socket.discard()
        var info = stat()
        #expect(lstat(path, &info) != 0 && errno == ENOENT)
        #expect(!connects(to: path))
    }

    @Test func refusesAPathThatExists() throws {
        let path = temporaryPath()
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        close(fd)
        defer { unlink(path) }
        #expect(bindError(path) == "invalidConfiguration: the API socket \(path) already exists: another VMM may be using it; if not, remove it and start again")
        var info = stat()
        #expect(lstat(path, &info) == 0, "the file is left alone")
    }

    @Test func refusesAPathTooLongForAUnixSocket() {
        let path = "/tmp/" + String(repeating: "s", count: 110)
        #expect(bindError(path) == "invalidConfiguration: the API socket path \(path) is 115 bytes: a Unix socket's path is 1 to 107 bytes; use a shorter one")
    }
}
