/// Something that raises an interrupt line, edge-style: an irqfd in a running VM, a counter in tests.
public protocol InterruptLine: Sendable {
    func trigger()
}

extension EventFd: InterruptLine {
    /// An eventfd registered with KVM_IRQFD: one write is one edge on its GSI, without a trip through the VMM.
    public func trigger() { signal() }
}
