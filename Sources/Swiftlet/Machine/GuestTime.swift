import SwiftletHost
import SwiftletKVM
import SwiftletSnapshot

/// The guest's time, held still: its kvmclock, and each vCPU's TSC paired with the kvmclock reading taken just
/// before it. A pause reads it and a resume sets it back, a snapshot saves it and a restore sets it, so that the
/// guest's time stops whole: kvmclock and TSC alike.
///
/// Why both, and why paired: Linux's clocksource watchdog compares the TSC against kvmclock every half second and
/// marks the TSC unstable when they drift apart by more than about 200 µs. A kvmclock set back while the TSC ran on
/// shows it a jump of the whole pause; setting both back to values read a few system calls apart shows it the time
/// those calls took, which under the lab's emulated CPU is about a millisecond. So each TSC is set from the clock
/// just read: `tsc + (kvmclock now − kvmclock when that TSC was read) × the vCPU's TSC frequency`, and the error is
/// the time between one KVM_GET_CLOCK and the KVM_SET_MSRS after it.
struct GuestTime: Sendable, Equatable {
    var clock: UInt64
    var counters: [Counter]

    /// The most nanoseconds a TSC is moved from its saved value: a minute.
    static let maximumGap: Int64 = 60_000_000_000
    /// The fastest TSC a snapshot may claim: 100 GHz.
    static let maximumKilohertz: UInt64 = 100_000_000

    struct Counter: Sendable, Equatable {
        /// kvmclock, read just before `value`.
        var clock: UInt64
        /// IA32_TSC.
        var value: UInt64
        var kilohertz: UInt32
    }

    /// The time of a machine whose vCPUs are not running (parked, or not started).
    static func read(vm: SwiftletKVM.VirtualMachine, vcpus: [Vcpu]) throws(SwiftletError) -> GuestTime {
        let clock = try vm.clock()
        var counters: [Counter] = []
        for vcpu in vcpus {
            let before = try vm.clock()
            let khz = min(try vcpu.timeStampCounterKilohertz(), UInt32(Self.maximumKilohertz))
            counters.append(Counter(clock: before, value: try vcpu.timeStampCounter(), kilohertz: khz))
        }
        return GuestTime(clock: clock, counters: counters)
    }

    /// Sets the machine's clock to `clock`, then each vCPU's TSC to what it reads at the kvmclock just read.
    func set(vm: SwiftletKVM.VirtualMachine, vcpus: [Vcpu]) throws(SwiftletError) {
        try vm.setClock(clock)
        for (vcpu, counter) in zip(vcpus, counters) {
            let now = try vm.clock()
            // Negative when set back before that reading; within a minute either way whatever a state file says (the
            // readings are microseconds apart), so that ns × kHz stays inside 64 bits (kHz is at most 10^8).
            let elapsed = min(max(Int64(bitPattern: now &- counter.clock), -Self.maximumGap), Self.maximumGap)
            let delta = elapsed * Int64(counter.kilohertz) / 1_000_000
            try vcpu.setMSRs([(index: Vcpu.tscMSR, value: counter.value &+ UInt64(bitPattern: delta))])
        }
    }

    /// The `time` record: the clock, and per vCPU the clock, TSC and frequency.
    func save(into encoder: inout SnapshotEncoder) {
        encoder.record("clck", integer: clock)
        encoder.record("tscs", array: counters.flatMap { [$0.clock, $0.value, UInt64($0.kilohertz)] })
    }

    init(clock: UInt64, counters: [Counter]) {
        self.clock = clock
        self.counters = counters
    }

    init(from decoder: SnapshotDecoder, vcpus: Int) throws(SnapshotError) {
        clock = try decoder.integer("clck")
        let values = try decoder.array("tscs", of: UInt64.self, maximum: 3 * vcpus)
        guard values.count == 3 * vcpus else {
            throw .malformed("the guest's time has \(values.count / 3) TSCs, and the machine \(vcpus) vCPUs")
        }
        counters = []
        for index in 0..<vcpus {
            let khz = values[3 * index + 2]
            guard khz > 0, khz <= Self.maximumKilohertz else { throw .malformed("vCPU \(index)'s TSC runs at \(khz) kHz") }
            counters.append(Counter(clock: values[3 * index], value: values[3 * index + 1], kilohertz: UInt32(khz)))
        }
    }
}
