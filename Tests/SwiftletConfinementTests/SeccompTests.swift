import Glibc
import SwiftletConfinement
import SwiftletHost
import Synchronization
import Testing

@Suite struct SeccompTests {
    @Test func everyFilterCompiles() throws {
        for mode in [SeccompMode.on, .log] {
            let confinement = try Confinement(mode: mode)
            let sizes = confinement.sizes
            #expect(Set(sizes.keys) == Set(ThreadClass.allCases.map(\.rawValue) + ["process"]))
            for (name, count) in sizes {
                #expect(count > 10 && count <= 4096, "filter \(name): \(count) instructions")
            }
        }
        #expect(try Confinement(mode: .off).sizes.isEmpty)
    }

    /// A name libseccomp does not know is left out of a filter (for calls another architecture lacks), so a typo
    /// would silently allow nothing. On x86_64, the architecture the lists were written and measured on, every name
    /// must resolve.
    @Test func everyCallNameIsAKnownSystemCall() {
        #if arch(x86_64)
        let rules = SeccompPolicy.process + ThreadClass.allCases.flatMap { SeccompPolicy.rules($0) }
        let unknown = Set(rules.filter { $0.number == nil }.map(\.name))
        #expect(unknown.isEmpty, "not system calls here: \(unknown.sorted())")
        #endif
    }

    /// The forbidden-call trigger exists only in the test build (`make trigger`), never in this one or a release.
    @Test func normalBuildsHaveNoTrigger() {
        #expect(!SeccompTrigger.isBuiltIn)
    }

    /// A thread that entered a class (in log mode, which lets every call through) shows the filter in its status,
    /// and its allowed calls work; its creator stays unfiltered.
    @Test func aThreadEntersItsFilter() throws {
        let confinement = try Confinement(mode: .log)
        let seen = Mutex<(mode: Int32, status: String, written: Int)?>(nil)
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let writeEnd = ends[1]
        let thread = try HostThread(name: "seccomp-test") {
            do { try confinement.enter(.console) } catch { return }
            var byte: UInt8 = 7
            let written = write(writeEnd, &byte, 1)
            var status = ""
            if let file = fopen("/proc/thread-self/status", "r") {
                var line = [CChar](repeating: 0, count: 256)
                while fgets(&line, 256, file) != nil {
                    let text = String(cString: line)
                    if text.hasPrefix("Seccomp:") { status = text }
                }
                fclose(file)
            }
            seen.withLock { $0 = (Seccomp.currentThreadMode, status, written) }
        }
        thread.join()
        let result = try #require(seen.withLock { $0 })
        #expect(result.mode == 2)
        #expect(result.status.hasPrefix("Seccomp:\t2"))
        #expect(result.written == 1)
        #expect(Seccomp.currentThreadMode == 0)
        close(ends[0])
        close(ends[1])
    }
}
