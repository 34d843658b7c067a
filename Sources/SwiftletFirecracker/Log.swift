import Glibc
import SwiftletHost
import SystemPackage

/// Firecracker's human-readable log (`PUT /logger`, `--log-path`, `--level`): one line per event, appended to a file
/// or FIFO that must exist, as Firecracker requires. A line is
/// `2026-12-02T16:30:00.123456789 [ID:api:LEVEL:origin] message`, the level and origin only when `show_level` and
/// `show_log_origin` ask for them. Without a log path nothing is logged (the VMM's own errors still go to stderr).
final class LogWriter: Sendable {
    enum Level: Int, Comparable, Sendable {
        case error = 1, warning, info, debug, trace
        static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        var name: String { ["", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"][rawValue] }
    }

    let path: String
    private let file: OwnedFileDescriptor
    /// The most verbose level written; nil for `Off`.
    private let threshold: Level?
    private let id: String
    private let showLevel: Bool
    private let showOrigin: Bool

    /// Firecracker's level names (`Warning` is `WARN` in lines); the default is Info.
    static func level(named name: String?) -> Level?? {
        switch name {
        case nil, "Info": return .some(.info)
        case "Error": return .some(.error)
        case "Warning": return .some(.warning)
        case "Debug": return .some(.debug)
        case "Trace": return .some(.trace)
        case "Off": return .some(nil)
        default: return nil
        }
    }

    init(_ request: Logger, id: String) throws(APIFault) {
        guard let path = request.log_path, !path.isEmpty else {
            throw APIFault("log_path is required: Swiftlet logs to a file or FIFO that exists")
        }
        guard let threshold = Self.level(named: request.level) else {
            throw APIFault("level `\(request.level ?? "")` is not one of `Error`, `Warning`, `Info`, `Debug`, `Trace`, `Off`")
        }
        self.path = path
        self.threshold = threshold
        self.id = id
        showLevel = request.show_level ?? false
        showOrigin = request.show_log_origin ?? false
        do {
            file = try OwnedFileDescriptor(opening: path, flags: O_WRONLY | O_APPEND | O_NONBLOCK)
        } catch {
            throw APIFault("log_path \(path): \(error) (Firecracker's log path must exist: create the file or FIFO first)")
        }
    }

    func log(_ level: Level, _ message: String, origin: String = #fileID, line: Int = #line) {
        guard let threshold, level <= threshold else { return }
        var tags = "\(id):api"
        if showLevel { tags += ":\(level.name)" }
        if showOrigin { tags += ":\(origin):\(line)" }
        var text = Array("\(Self.timestamp()) [\(tags)] \(message)\n".utf8)
        // A log line that cannot be written (a FIFO nobody reads) is dropped: logging never stops the VMM.
        text.withUnsafeMutableBytes { bytes in _ = try? file.writeAll(UnsafeRawBufferPointer(bytes)) }
    }

    /// UTC, with nanoseconds: 2026-12-02T16:30:00.123456789.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(now.tv_nsec), 9))"
    }
}
