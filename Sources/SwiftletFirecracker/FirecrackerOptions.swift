/// Firecracker's command line, as `swiftlet firecracker` (or this executable started as `firecracker`) takes it.
///
/// Parsed by hand, not by swift-argument-parser: its first parse reflects over every option type and scans the
/// executable's conformance records, about 2 ms of the time from exec to the API socket accepting (README,
/// "Firecracker's API"), and Firecracker's own parser is as plain as this one. Options are `--name VALUE` (as
/// Firecracker writes them) or `--name=VALUE`; a flag takes no value.
public struct FirecrackerOptions: Equatable, Sendable {
    public var apiSocket = "/run/firecracker.socket"
    public var configFile: String?
    public var noAPI = false
    public var id = "anonymous-instance"
    public var bootTimer = false
    public var level: String?
    public var logPath: String?
    public var metricsPath: String?
    public var seccompLevel: Int?
    public var noSeccomp = false
    public var describe = false
    /// `--help` or `-h`: print `help` and do nothing else.
    public var help = false
    /// `--version`: print `versionLine` and do nothing else.
    public var version = false

    public init() {}

    /// Firecracker's seccomp levels mapped onto Swiftlet's: 0 (or --no-seccomp) no filters, 1 and 2 Swiftlet's
    /// per-thread filters.
    public var seccompFilters: Bool { !(noSeccomp || seccompLevel == 0) }

    /// A command line that cannot be run, with what to change.
    public struct UsageError: Error, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// The options, in `--help`'s order: a value's name (empty for a flag) and what it does. `parse` sets each.
    private static let options: [(name: String, valueName: String, help: String)] = [
        ("api-sock", "path", "The API's Unix socket (default /run/firecracker.socket); it must not exist, and is removed at exit."),
        ("config-file", "path", "Firecracker's JSON machine configuration: boot it without waiting for the API."),
        ("no-api", "", "Serve no API (needs --config-file)."),
        ("id", "id", "The instance ID (GET / reports it; default anonymous-instance)."),
        ("boot-timer", "", "Print, on stderr, how long the guest took from this process's start to its init (the boot-timer port)."),
        ("level", "level", "The log level, as PUT /logger's (Error, Warning, Info, Debug, Trace, Off)."),
        ("log-path", "path", "Where log lines go (a file or FIFO that exists); default standard error."),
        ("metrics-path", "path", "Where metrics lines go (a file or FIFO that exists), as PUT /metrics."),
        ("seccomp-level", "0|1|2", "Firecracker's seccomp levels: 0 no filters, 1 or 2 Swiftlet's per-thread filters (swiftlet run --seccomp on)."),
        ("no-seccomp", "", "No seccomp filters (as --seccomp-level 0)."),
        ("describe", "", "Print what the guest of --config-file would see, as `swiftlet describe` prints it for the same machine given as run's options, and exit: nothing is opened or booted."),
        ("version", "", "Print the Firecracker version whose API this is, and exit."),
        ("help", "", "Print this help, and exit."),
    ]

    /// Sets option `name` (from the table above) to `value` (nil for a flag). No key paths: their first use costs
    /// the runtime a metadata lookup by mangled name each.
    private mutating func set(_ name: String, _ value: String?) {
        switch name {
        case "api-sock": apiSocket = value!
        case "config-file": configFile = value
        case "no-api": noAPI = true
        case "id": id = value!
        case "boot-timer": bootTimer = true
        case "level": level = value
        case "log-path": logPath = value
        case "metrics-path": metricsPath = value
        case "seccomp-level": seccompLevelText = value
        case "no-seccomp": noSeccomp = true
        case "describe": describe = true
        case "version": version = true
        case "help": help = true
        default: preconditionFailure("--\(name) is in the option table but not set here")
        }
    }

    /// Parses `arguments` (without the program name or the `firecracker` subcommand).
    public static func parse(_ arguments: [String]) throws(UsageError) -> FirecrackerOptions {
        var options = FirecrackerOptions()
        var rest = arguments.makeIterator()
        var given: [String] = []
        while let argument = rest.next() {
            if argument == "-h" {
                options.help = true
                continue
            }
            guard argument.hasPrefix("--"), argument.count > 2 else {
                throw UsageError("unexpected argument '\(argument)': Firecracker's command line takes only options (--help lists them)")
            }
            let text = argument.dropFirst(2)
            let name: String
            var inlineValue: String?
            if let equals = text.firstIndex(of: "=") {
                name = String(text[..<equals])
                inlineValue = String(text[text.index(after: equals)...])
            } else {
                name = String(text)
            }
            guard let option = Self.options.first(where: { $0.name == name }) else {
                throw UsageError("unknown option '--\(name)' (--help lists the options Swiftlet's Firecracker front end takes)")
            }
            guard !given.contains(name) else { throw UsageError("--\(name) is given twice") }
            given.append(name)
            if option.valueName.isEmpty {
                guard inlineValue == nil else { throw UsageError("--\(name) is a flag and takes no value") }
                options.set(name, nil)
            } else {
                guard let value = inlineValue ?? rest.next() else { throw UsageError("--\(name) needs a value (\(option.valueName))") }
                guard !value.isEmpty else { throw UsageError("--\(name) needs a value (\(option.valueName)), not an empty one") }
                options.set(name, value)
            }
        }
        if options.help || options.version { return options }
        if let text = options.seccompLevelText {
            guard let level = Int(text), (0...2).contains(level) else { throw UsageError("--seccomp-level \(text) is not 0, 1 or 2") }
            options.seccompLevel = level
        }
        // Firecracker's rule for instance IDs (they name log lines, metrics and the jailer's directory).
        guard (1...64).contains(options.id.utf8.count), options.id.utf8.allSatisfy({ $0 == UInt8(ascii: "-") || isASCIIAlphanumeric($0) }) else {
            throw UsageError("--id must be 1 to 64 letters, digits and hyphens, as Firecracker's")
        }
        if options.noAPI && options.configFile == nil {
            throw UsageError("--no-api needs --config-file: without the API, the configuration file is the only way to describe the microVM")
        }
        if options.describe && options.configFile == nil { throw UsageError("--describe needs --config-file: the machine to describe") }
        return options
    }

    private static func isASCIIAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    /// What `--help` prints; `program` is how the user started it (`swiftlet firecracker` or `firecracker`).
    public static func help(program: String) -> String {
        var text = """
            OVERVIEW: Answer Firecracker's API (and its command line), so that tools made for Firecracker drive Swiftlet.

            Serves Firecracker's REST API (v\(FirecrackerVMM.apiVersion): HTTP/1.1 on the Unix socket --api-sock) and
            boots the microVM it describes on InstanceStart; or boots --config-file's machine at once. The guest's
            serial console is on standard output. The process ends when the guest does: status 0 for a reboot or a
            power-off, 2 for a guest kernel panic, 1 with a message for a failure, 64 for a command line it cannot
            run. A symlink named `firecracker` to this executable takes the same options. Endpoints Swiftlet does not
            implement answer 400 with the reason (README, "Firecracker's API").

            USAGE: \(program) [--api-sock <path>] [--config-file <path>] [--no-api] [--id <id>] [--boot-timer]
                   [--level <level>] [--log-path <path>] [--metrics-path <path>] [--seccomp-level <0|1|2>]
                   [--no-seccomp] [--describe]

            OPTIONS:

            """
        for option in options {
            var head = "  --" + option.name
            if !option.valueName.isEmpty { head += " <\(option.valueName)>" }
            text += head + "\n        " + option.help + "\n"
        }
        return text
    }

    /// What `--version` prints.
    public static let versionLine = "Firecracker v\(FirecrackerVMM.apiVersion) (the API Swiftlet's front end answers)"

    /// --seccomp-level as given, checked once every option is read.
    private var seccompLevelText: String?
}
