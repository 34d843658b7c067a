/// A guest-physical address. A distinct type so that host pointers, offsets and guest addresses never mix.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: GuestAddress, rhs: GuestAddress) -> Bool { lhs.rawValue < rhs.rawValue }

    /// `self + offset`, or nil when it overflows.
    public func adding(_ offset: UInt64) -> GuestAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : GuestAddress(sum)
    }

    /// Rounds up to a multiple of `alignment` (a power of two), or nil on overflow.
    public func alignedUp(to alignment: UInt64) -> GuestAddress? {
        precondition(alignment.nonzeroBitCount == 1, "alignment must be a power of two")
        guard let bumped = adding(alignment - 1) else { return nil }
        return GuestAddress(bumped.rawValue & ~(alignment - 1))
    }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
