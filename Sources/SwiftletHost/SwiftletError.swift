import SystemPackage

/// The one error type Swiftlet throws: what failed, in words that say what to do, and the system error behind it.
public struct SwiftletError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case kvmUnavailable, kvmUnsupported, kvmCannotRunGuests
        case invalidConfiguration, invalidKernel, invalidInitrd
        case outOfMemory, guestMemory, systemCall, guestFault, io
        /// The guest agent (exec) is not reachable, refused, or could not start the command.
        case agentUnavailable, connectionRefused, execFailed, timedOut
    }

    public var code: Code
    public var message: String
    public var cause: Errno?

    public init(_ code: Code, _ message: String, cause: Errno? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        guard let cause else { return message }
        return "\(message): \(cause.description)"
    }
}
