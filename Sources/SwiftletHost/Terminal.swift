import Glibc

/// Raw mode on a terminal, restored by `restore()` (call it on every exit path) or when the owner goes away.
public final class RawTerminalMode: @unchecked Sendable {
    // @unchecked: `saved` is written once in init and read by restore(), which callers serialise (exit paths).
    private let fd: Int32
    private var saved: termios?

    /// Puts `fd` in raw mode if it is a terminal; does nothing otherwise.
    public init(fd: Int32) {
        self.fd = fd
        guard isatty(fd) == 1 else { return }
        var original = termios()
        guard tcgetattr(fd, &original) == 0 else { return }
        var raw = original
        cfmakeraw(&raw)
        // Keep output post-processing so the host terminal shows lines the usual way.
        raw.c_oflag |= tcflag_t(OPOST)
        guard tcsetattr(fd, TCSANOW, &raw) == 0 else { return }
        saved = original
    }

    public var isRaw: Bool { saved != nil }

    public func restore() {
        guard var original = saved else { return }
        tcsetattr(fd, TCSANOW, &original)
        saved = nil
    }

    deinit { restore() }
}
