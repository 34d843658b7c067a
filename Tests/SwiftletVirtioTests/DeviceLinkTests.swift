import Synchronization
import SwiftletTestSupport
import SwiftletVirtio
import Testing

/// Found by the net fuzz target, as a slowdown: the fatal-error callback sat in a `Mutex<(() -> Void)?>`, and every
/// `withLock { $0 }` wrapped it in two more reabstraction thunks on write-back. A guest that broke its rings again and
/// again (each reset re-arms it) made every report walk a longer chain of thunks: O(n) time and stack per report,
/// and in the end a stack overflow. The callback's call depth must not grow with the number of reports.
@Suite struct DeviceLinkTests {
    /// The address of a local in the callback: the depth of the stack at the call, as seen by the callee.
    final class DepthProbe: @unchecked Sendable {
        var depths: [UInt] = []
        func record() {
            var local = 0
            withUnsafeMutablePointer(to: &local) { depths.append(UInt(bitPattern: $0)) }
        }
    }

    @Test func reportingAFatalErrorDoesNotDeepenTheCallback() {
        let link = DeviceLink()
        let probe = DepthProbe()
        link.attach(interrupt: VirtioInterrupt(line: CountingLine())) { probe.record() }
        for _ in 0..<1000 { link.reportFatalError() }
        #expect(probe.depths.count == 1000)
        #expect(probe.depths.first == probe.depths.last, "the callback ran \(Int(probe.depths[0]) - Int(probe.depths[999])) bytes deeper after 1000 reports")
    }
}
