import CSwiftlet
import Glibc

/// The machine name of the running kernel (`uname -m`: "x86_64", "aarch64", ...). The corresponding C function is
/// `uname`.
public func hostMachineName() -> String {
    var names = utsname()
    guard uname(&names) == 0 else { return "unknown" }
    return withUnsafeBytes(of: &names.machine) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// Fills `buffer` with random bytes from the kernel (for seeds handed to a guest). The corresponding C function is
/// `getrandom`.
public func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) throws(SwiftletError) {
    var filled = 0
    while filled < buffer.count {
        let result = CSwiftlet_getrandom(buffer.baseAddress! + filled, buffer.count - filled, 0)
        if result < 0 {
            if errno == EINTR { continue }
            throw SwiftletError(.systemCall, "getrandom failed", cause: .init(rawValue: errno))
        }
        filled += result
    }
}
