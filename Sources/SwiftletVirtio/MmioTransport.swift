import Synchronization
import SwiftletHost
import SwiftletMemory

/// The virtio-mmio transport, modern interface (Version 2), register by register as virtio 1.2 §4.2.2 lays them
/// out. Every value the driver writes is checked: writes that the status state machine does not allow at that
/// moment are ignored (and counted), queues are validated before they can become ready, and FEATURES_OK is refused
/// unless the driver accepted VERSION_1 and nothing the device did not offer.
public final class MmioTransport: Sendable {
    public static let size: UInt64 = 0x1000
    public static let magic: UInt32 = 0x7472_6976 // "virt"
    public static let vendorID: UInt32 = 0x5357_4c54 // "SWLT"

    // Register offsets (§4.2.2).
    public enum Register {
        public static let magicValue = 0x000, version = 0x004, deviceID = 0x008, vendorID = 0x00c
        public static let deviceFeatures = 0x010, deviceFeaturesSelect = 0x014
        public static let driverFeatures = 0x020, driverFeaturesSelect = 0x024
        public static let queueSelect = 0x030, queueSizeMaximum = 0x034, queueSize = 0x038, queueReady = 0x044
        public static let queueNotify = 0x050, interruptStatus = 0x060, interruptAcknowledge = 0x064, status = 0x070
        public static let queueDescriptorLow = 0x080, queueDescriptorHigh = 0x084
        public static let queueDriverLow = 0x090, queueDriverHigh = 0x094
        public static let queueDeviceLow = 0x0a0, queueDeviceHigh = 0x0a4
        public static let sharedMemorySelect = 0x0ac, sharedMemoryLengthLow = 0x0b0, sharedMemoryLengthHigh = 0x0b4
        public static let sharedMemoryBaseLow = 0x0b8, sharedMemoryBaseHigh = 0x0bc
        public static let configurationGeneration = 0x0fc, configuration = 0x100
    }

    // Device status bits (§2.1).
    public enum Status {
        public static let acknowledge: UInt32 = 1, driver: UInt32 = 2, driverOK: UInt32 = 4, featuresOK: UInt32 = 8
        public static let deviceNeedsReset: UInt32 = 64, failed: UInt32 = 128
    }

    struct State {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [QueueConfiguration]
        var configurationGeneration: UInt32 = 0
        var ignoredWrites: UInt64 = 0
    }

    public let device: any VirtioDevice
    public let interrupt: VirtioInterrupt
    private let memory: GuestMemory
    private let state: Mutex<State>

    public init(device: any VirtioDevice, interrupt: VirtioInterrupt, memory: GuestMemory) {
        self.device = device
        self.interrupt = interrupt
        self.memory = memory
        state = Mutex(State(queues: Array(repeating: QueueConfiguration(), count: device.queueMaximumSizes.count)))
    }

    /// Register writes the state machine refused (a misbehaving or hostile driver).
    public var ignoredWrites: UInt64 { state.withLock { $0.ignoredWrites } }
    public var status: UInt32 { state.withLock { $0.status } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
        if offset >= UInt64(Register.configuration) {
            device.readConfiguration(offset: Int(offset) - Register.configuration, into: data)
            return
        }
        // Registers below the configuration space are 32 bits wide and read whole (§4.2.2.2).
        guard data.count == 4, offset % 4 == 0 else { return }
        let value: UInt32 = state.withLock { state in
            let selected = Int(state.queueSelect)
            let queue = selected < state.queues.count ? state.queues[selected] : nil
            switch Int(offset) {
            case Register.magicValue: return Self.magic
            case Register.version: return 2
            case Register.deviceID: return device.deviceType
            case Register.vendorID: return Self.vendorID
            case Register.deviceFeatures:
                switch state.deviceFeaturesSelect {
                case 0: return UInt32(truncatingIfNeeded: device.offeredFeatures)
                case 1: return UInt32(truncatingIfNeeded: device.offeredFeatures >> 32)
                default: return 0
                }
            case Register.queueSizeMaximum:
                return queue == nil ? 0 : UInt32(device.queueMaximumSizes[selected])
            case Register.queueReady: return queue?.ready == true ? 1 : 0
            case Register.interruptStatus: return interrupt.pending
            case Register.status: return state.status
            case Register.sharedMemoryLengthLow, Register.sharedMemoryLengthHigh,
                 Register.sharedMemoryBaseLow, Register.sharedMemoryBaseHigh:
                return UInt32.max // no shared memory regions: length and base all ones (§4.2.2)
            case Register.configurationGeneration: return state.configurationGeneration
            default: return 0
            }
        }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        if offset >= UInt64(Register.configuration) {
            // Configuration writes only while the driver is setting the device up or running it.
            let allowed = state.withLock { $0.status & Status.driver != 0 && $0.status & Status.failed == 0 }
            if allowed { device.writeConfiguration(offset: Int(offset) - Register.configuration, from: data) }
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        switch Int(offset) {
        case Register.queueNotify:
            // Normally an ioeventfd catches this write in the kernel; if it reaches us, pass it on the same way.
            let events = device.queueEvents
            if Int(value) < events.count { events[Int(value)].signal() }
        case Register.interruptAcknowledge:
            interrupt.acknowledge(value)
        case Register.status:
            writeStatus(value)
        default:
            state.withLock { writeRegister(offset: Int(offset), value: value, state: &$0) }
        }
    }

    private func writeRegister(offset: Int, value: UInt32, state: inout State) {
        let settingFeatures = state.status & Status.driver != 0 && state.status & Status.featuresOK == 0
        let settingQueues = state.status & Status.featuresOK != 0 && state.status & Status.driverOK == 0
        let selected = Int(state.queueSelect)
        let queueWritable = settingQueues && selected < state.queues.count && !state.queues[selected].ready
        func refuse() { state.ignoredWrites += 1 }
        func setAddress(_ update: (inout QueueConfiguration) -> Void) {
            guard queueWritable else { return refuse() }
            update(&state.queues[selected])
        }
        switch offset {
        case Register.deviceFeaturesSelect: state.deviceFeaturesSelect = value
        case Register.driverFeaturesSelect: state.driverFeaturesSelect = value
        case Register.driverFeatures:
            guard settingFeatures else { return refuse() }
            switch state.driverFeaturesSelect {
            case 0: state.driverFeatures = (state.driverFeatures & ~0xffff_ffff) | UInt64(value)
            case 1: state.driverFeatures = (state.driverFeatures & 0xffff_ffff) | (UInt64(value) << 32)
            default: if value != 0 { refuse() } // no features live above bit 63
            }
        case Register.queueSelect: state.queueSelect = value
        case Register.queueSize:
            guard queueWritable, value <= UInt32(UInt16.max) else { return refuse() }
            state.queues[selected].size = UInt16(value)
        case Register.queueReady:
            guard settingQueues, selected < state.queues.count else { return refuse() }
            if value == 0 {
                state.queues[selected].ready = false
            } else if state.queues[selected].problem(maximumSize: device.queueMaximumSizes[selected], memory: memory,
                                                     layout: RingLayout(features: state.driverFeatures)) == nil {
                state.queues[selected].ready = true
            } else {
                refuse() // an invalid queue never becomes ready; the driver reads back 0
            }
        case Register.queueDescriptorLow: setAddress { $0.descriptorTable = Self.low($0.descriptorTable, value) }
        case Register.queueDescriptorHigh: setAddress { $0.descriptorTable = Self.high($0.descriptorTable, value) }
        case Register.queueDriverLow: setAddress { $0.availableRing = Self.low($0.availableRing, value) }
        case Register.queueDriverHigh: setAddress { $0.availableRing = Self.high($0.availableRing, value) }
        case Register.queueDeviceLow: setAddress { $0.usedRing = Self.low($0.usedRing, value) }
        case Register.queueDeviceHigh: setAddress { $0.usedRing = Self.high($0.usedRing, value) }
        case Register.sharedMemorySelect: break
        default: refuse() // read-only or unknown register
        }
    }

    private static func low(_ address: GuestAddress, _ value: UInt32) -> GuestAddress {
        GuestAddress((address.rawValue & ~0xffff_ffff) | UInt64(value))
    }

    private static func high(_ address: GuestAddress, _ value: UInt32) -> GuestAddress {
        GuestAddress((address.rawValue & 0xffff_ffff) | (UInt64(value) << 32))
    }

    /// The status state machine (§3.1.1): 0 resets; otherwise bits are only added, in the order ACKNOWLEDGE,
    /// DRIVER, FEATURES_OK, DRIVER_OK (FAILED at any time).
    private func writeStatus(_ value: UInt32) {
        if value == 0 {
            device.reset()
            state.withLock { state in
                let generation = state.configurationGeneration
                state = State(queues: Array(repeating: QueueConfiguration(), count: device.queueMaximumSizes.count))
                state.configurationGeneration = generation &+ 1
            }
            interrupt.clear()
            return
        }
        var activation: VirtioActivation?
        state.withLock { state in
            let old = state.status
            let added = value & ~old
            guard value & old == old else { state.ignoredWrites += 1; return } // bits cannot be cleared but by reset
            if added & Status.failed != 0 {
                state.status = value
                return
            }
            switch added {
            case Status.acknowledge where old == 0,
                 Status.driver where old == Status.acknowledge:
                state.status = value
            case Status.featuresOK where old == Status.acknowledge | Status.driver:
                // Refused (left clear, the driver reads it back) unless VERSION_1 is accepted and nothing extra is.
                let features = state.driverFeatures
                if features & VirtioFeature.version1 != 0 && features & ~device.offeredFeatures == 0 {
                    state.status = value
                } else {
                    state.ignoredWrites += 1
                }
            case Status.driverOK where old == Status.acknowledge | Status.driver | Status.featuresOK:
                state.status = value
                var queues: [(any Virtqueue)?] = []
                for (index, configuration) in state.queues.enumerated() {
                    queues.append(configuration.ready
                        ? try? configuration.makeQueue(maximumSize: device.queueMaximumSizes[index], memory: memory,
                                                       features: state.driverFeatures)
                        : nil)
                }
                activation = VirtioActivation(queues: queues, features: state.driverFeatures, memory: memory)
            default:
                state.ignoredWrites += 1
            }
        }
        guard let activation else { return }
        do {
            try device.activate(activation)
        } catch {
            state.withLock { $0.status |= Status.deviceNeedsReset }
            interrupt.signal(VirtioInterrupt.configChange)
        }
    }

    /// The transport's state for a snapshot. `positions` is where the device stands in each queue (nil for one it
    /// does not serve), read from the device while nothing runs it (vCPUs and its loop parked).
    public func saveState(positions: [QueuePosition?]) -> TransportState {
        state.withLock { state in
            var saved = TransportState()
            saved.status = state.status
            saved.deviceFeaturesSelect = state.deviceFeaturesSelect
            saved.driverFeaturesSelect = state.driverFeaturesSelect
            saved.driverFeatures = state.driverFeatures
            saved.queueSelect = state.queueSelect
            saved.configurationGeneration = state.configurationGeneration
            saved.interruptStatus = interrupt.pending
            saved.queues = state.queues
            saved.positions = (0..<state.queues.count).map { $0 < positions.count ? positions[$0] : nil }
            return saved
        }
    }

    /// The status values the state machine reaches (`writeStatus`), before FAILED and DEVICE_NEEDS_RESET.
    static let reachableStatus: Set<UInt32> = [0, Status.acknowledge, Status.acknowledge | Status.driver,
                                               Status.acknowledge | Status.driver | Status.featuresOK,
                                               Status.acknowledge | Status.driver | Status.featuresOK | Status.driverOK]

    /// Sets a snapshot's transport state on this transport (new, its driver not yet heard from), and when the driver
    /// had set DRIVER_OK, activates the device with its queues at the saved positions. A state this device could not
    /// have reached is refused, saying why: another number of queues, features it does not offer (a host whose TAP
    /// lacks an offload the snapshot's guest accepted), a status the state machine never takes, a queue that is not
    /// valid in this guest memory, or a position with more chains out than the queue has entries.
    public func restore(_ saved: TransportState) throws(SwiftletError) {
        let sizes = device.queueMaximumSizes
        func refuse(_ why: String) -> SwiftletError { SwiftletError(.invalidConfiguration, "cannot restore virtio device \(device.deviceType)'s transport: \(why)") }
        guard saved.queues.count == sizes.count, saved.positions.count == sizes.count else {
            throw refuse("the snapshot has \(saved.queues.count) queues, the device \(sizes.count)")
        }
        guard saved.driverFeatures & ~device.offeredFeatures == 0 else {
            throw refuse("the driver accepted features 0x\(String(saved.driverFeatures & ~device.offeredFeatures, radix: 16)) that this device does not offer here")
        }
        let failedBits = Status.failed | Status.deviceNeedsReset
        guard Self.reachableStatus.contains(saved.status & ~failedBits) else {
            throw refuse("status 0x\(String(saved.status, radix: 16)) is not one the driver can reach")
        }
        guard saved.status & Status.featuresOK == 0 || saved.driverFeatures & VirtioFeature.version1 != 0 else {
            throw refuse("FEATURES_OK without VERSION_1, which this transport never accepts")
        }
        let layout = RingLayout(features: saved.driverFeatures)
        for (index, queue) in saved.queues.enumerated() where queue.ready {
            if let problem = queue.problem(maximumSize: sizes[index], memory: memory, layout: layout) { throw refuse("queue \(index): \(problem)") }
        }
        let running = saved.status & Status.driverOK != 0 && saved.status & failedBits == 0
        var queues: [(any Virtqueue)?] = []
        if running {
            for (index, queue) in saved.queues.enumerated() {
                guard queue.ready else { queues.append(nil); continue }
                do {
                    queues.append(try queue.makeQueue(maximumSize: sizes[index], memory: memory, features: saved.driverFeatures,
                                                      position: saved.positions[index]))
                } catch {
                    throw refuse("queue \(index): \(error.message)")
                }
            }
        }
        state.withLock { state in
            state.status = saved.status
            state.deviceFeaturesSelect = saved.deviceFeaturesSelect
            state.driverFeaturesSelect = saved.driverFeaturesSelect
            state.driverFeatures = saved.driverFeatures
            state.queueSelect = saved.queueSelect
            state.configurationGeneration = saved.configurationGeneration
            state.queues = saved.queues
        }
        if running {
            do {
                try device.activate(VirtioActivation(queues: queues, features: saved.driverFeatures, memory: memory))
            } catch {
                throw refuse("the device did not take its queues back: \(error.message)")
            }
        }
        interrupt.restore(saved.interruptStatus)
    }

    /// Tells the driver that the device changed its configuration space (a new balloon target, say): a new
    /// ConfigGeneration, so a driver reading across the change retries (§2.5.1), and a configuration change interrupt.
    public func notifyConfigurationChange() {
        state.withLock { $0.configurationGeneration &+= 1 }
        interrupt.signal(VirtioInterrupt.configChange)
    }

    /// Tells the driver the device needs a reset (after a fatal queue error, say).
    public func markNeedsReset() {
        state.withLock { $0.status |= Status.deviceNeedsReset }
        interrupt.signal(VirtioInterrupt.configChange)
    }
}
