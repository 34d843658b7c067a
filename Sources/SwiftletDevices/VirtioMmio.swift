import SwiftletVirtio

/// The virtio-mmio register file sits on the MMIO bus like any other device.
extension MmioTransport: BusDevice {}
