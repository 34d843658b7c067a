import Foundation
import SwiftletBoot
import SwiftletMemory
import Testing

/// The aarch64 device tree checked by tools nobody here wrote: Debian's `dtc` decompiles it into the source the test
/// expects, node by node, without warnings, and dtschema's `dt-validate` checks it against the upstream bindings of
/// Linux 6.1 (Debian's linux-source) and reports nothing. tools/setup-devicetree-tools.sh (run by
/// tools/install-deps.sh, so by `make test`) installs the pinned dtschema and processes the bindings.
enum DeviceTreeTools {
    static var cache: String {
        ProcessInfo.processInfo.environment["SWIFTLET_CACHE"] ?? (NSHomeDirectory() + "/.cache/swiftlet")
    }
    static let dtschemaVersion = "2023.1"

    static var dtc: String? {
        ["/usr/bin/dtc", "/usr/local/bin/dtc"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static var dtValidate: String? {
        let path = "\(cache)/dtschema/\(dtschemaVersion)/venv/bin/dt-validate"
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }

    static var processedSchema: String? {
        let directory = "\(cache)/dtschema/\(dtschemaVersion)"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("linux-") && $0.hasSuffix("-schema.json") }.sorted().last.map { "\(directory)/\($0)" }
    }

    /// Runs `arguments`, returning its exit status, stdout and stderr.
    static func run(_ arguments: [String]) throws -> (status: Int32, output: String, errors: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        let errorData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outputData, as: UTF8.self), String(decoding: errorData, as: UTF8.self))
    }

    /// Writes `blob` to a temporary file, runs `body` with its path, and removes it.
    static func withTemporaryFile<T>(_ blob: [UInt8], _ body: (String) throws -> T) throws -> T {
        let path = NSTemporaryDirectory() + "swiftlet-fdt-\(UUID().uuidString).dtb"
        try Data(blob).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }
}

/// The device-tree source dtc 1.6 prints for the board, written out node by node from the board's rules.
struct ExpectedSource {
    let cpus: Int
    let devices: Int
    let initrd: (start: UInt64, end: UInt64)?
    let gic: AArch64Board.InterruptController

    /// dtc prints each cell as 0x%02x.
    static func cell(_ value: UInt32) -> String { String(format: "0x%02x", value) }
    static func cells(_ values: [UInt32]) -> String { "<" + values.map(cell).joined(separator: " ") + ">" }
    static func pairs(_ values: [UInt64]) -> String {
        cells(values.flatMap { [UInt32(truncatingIfNeeded: $0 >> 32), UInt32(truncatingIfNeeded: $0)] })
    }

    /// The nodes in order, each as dtc prints it (without its children, which are separate entries).
    var nodes: [(path: String, properties: [String])] {
        let ppiFlags: UInt32 = gic == .gicV3 ? 4 : 4 | UInt32((1 << min(cpus, 8)) - 1) << 8
        var chosen = ["bootargs = \"console=ttyAMA0 earlycon\";", "stdout-path = \"/serial@9000000\";"]
        if let initrd {
            chosen += ["linux,initrd-start = \(Self.pairs([initrd.start]));", "linux,initrd-end = \(Self.pairs([initrd.end]));"]
        }
        // The seed bytes are 0, 1, 2, ... 63: cells 0x00010203, 0x4050607, ...
        let seedCells: [UInt32] = (0..<16).map { (index: Int) -> UInt32 in
            let first = UInt32(index * 4)
            return first << 24 | (first + 1) << 16 | (first + 2) << 8 | (first + 3)
        }
        chosen.append("rng-seed = \(Self.cells(seedCells));")
        chosen.append("kaslr-seed = <0x11223344 0x55667788>;")
        var nodes: [(String, [String])] = [
            ("/", ["compatible = \"linux,dummy-virt\";", "model = \"Swiftlet microVM\";", "#address-cells = <0x02>;",
                   "#size-cells = <0x02>;", "interrupt-parent = <0x01>;"]),
            ("/chosen", chosen),
            ("/memory@80000000", ["device_type = \"memory\";", "reg = \(Self.pairs([0x8000_0000, 512 << 20]));"]),
            ("/cpus", ["#address-cells = <0x01>;", "#size-cells = <0x00>;"]),
        ]
        for index in 0..<cpus {
            // KVM's MPIDR: 16 vCPUs per Aff0 cluster.
            let affinity = UInt32(index / 16) << 8 | UInt32(index % 16)
            nodes.append(("/cpus/cpu@\(String(affinity, radix: 16))",
                          ["device_type = \"cpu\";", "compatible = \"arm,armv8\";", "enable-method = \"psci\";", "reg = \(Self.cells([affinity]));"]))
        }
        nodes.append(("/psci", ["compatible = \"arm,psci-0.2\";", "method = \"hvc\";"]))
        let gicProperties: [String] = switch gic {
        case .gicV3: ["compatible = \"arm,gic-v3\";", "reg = \(Self.pairs([0x800_0000, 0x1_0000, 0x80a_0000, 0x2_0000 * UInt64(cpus)]));"]
        case .gicV2: ["compatible = \"arm,cortex-a15-gic\";", "reg = \(Self.pairs([0x800_0000, 0x1000, 0x801_0000, 0x2000]));"]
        }
        nodes.append(("/interrupt-controller@8000000", gicProperties + [
            "#interrupt-cells = <0x03>;", "#address-cells = <0x00>;", "interrupt-controller;",
            "interrupts = \(Self.cells([1, 9, ppiFlags]));", "phandle = <0x01>;"]))
        nodes.append(("/timer", ["compatible = \"arm,armv8-timer\";",
                                 "interrupts = \(Self.cells([1, 13, ppiFlags, 1, 14, ppiFlags, 1, 11, ppiFlags, 1, 10, ppiFlags]));",
                                 "always-on;"]))
        nodes.append(("/serial@9000000", ["compatible = \"ns16550a\";", "reg = \(Self.pairs([0x900_0000, 0x1000]));",
                                          "interrupts = <0x00 0x01 0x04>;", "clock-frequency = <0x1c2000>;"]))
        for index in 0..<devices {
            let base = 0xa00_0000 + UInt64(index) * 0x1000
            nodes.append(("/virtio_mmio@\(String(base, radix: 16))",
                          ["compatible = \"virtio,mmio\";", "reg = \(Self.pairs([base, 0x1000]));",
                           "interrupts = \(Self.cells([0, 16 + UInt32(index), 1]));", "dma-coherent;"]))
        }
        return nodes
    }
}

/// Splits dtc's output into (node path, properties) in order.
func parseDecompiled(_ source: String) -> [(path: String, properties: [String])] {
    var nodes: [(path: String, properties: [String])] = []
    var stack: [String] = []
    for raw in source.split(separator: "\n") {
        let line = raw.trimmingCharacters(in: .whitespaces)
        if line.isEmpty || line == "/dts-v1/;" { continue }
        if line.hasSuffix("{") {
            let name = String(line.dropLast().trimmingCharacters(in: .whitespaces))
            stack.append(name)
            let path = name == "/" ? "/" : "/" + stack.dropFirst().joined(separator: "/")
            nodes.append((path, []))
        } else if line == "};" {
            stack.removeLast()
        } else {
            nodes[nodes.count - 1].properties.append(line)
        }
    }
    return nodes
}

struct DeviceTreeConfiguration: CustomTestStringConvertible, Sendable {
    let cpus: Int
    let devices: Int
    let initrd: Bool
    let gic: AArch64Board.InterruptController
    var testDescription: String { "\(cpus) vCPUs, \(devices) virtio devices\(initrd ? ", initrd" : ""), \(gic.rawValue)" }

    static let all = [
        DeviceTreeConfiguration(cpus: 1, devices: 0, initrd: false, gic: .gicV3),
        DeviceTreeConfiguration(cpus: 1, devices: 3, initrd: true, gic: .gicV3),
        DeviceTreeConfiguration(cpus: 4, devices: 3, initrd: true, gic: .gicV3),
        DeviceTreeConfiguration(cpus: 8, devices: 3, initrd: true, gic: .gicV3),
        DeviceTreeConfiguration(cpus: 20, devices: 3, initrd: false, gic: .gicV3),
        DeviceTreeConfiguration(cpus: 4, devices: 3, initrd: true, gic: .gicV2),
    ]

    func build() throws -> (blob: [UInt8], expected: ExpectedSource) {
        var machine = try MachineDescription.layout(.aarch64, memorySize: 512 << 20, cpus: cpus,
                                                    virtioDeviceNames: (0..<devices).map { "d\($0)" },
                                                    commandLine: "console=ttyAMA0 earlycon")
        var initrdRange: (UInt64, UInt64)?
        if initrd {
            let header = try ARM64ImageHeader(ARM64Images.image(imageSize: 40 << 20), fileSize: 8256)
            let plan = try AArch64BootPlan(header: header, ram: machine.memory[0], initrdSize: 7_654_321)
            machine.initrd = plan.initrd
            initrdRange = (plan.initrd!.start.rawValue, plan.initrd!.start.rawValue + 7_654_321)
        }
        let board = AArch64Board(machine: machine, interruptController: gic, rngSeed: (0..<64).map { UInt8($0) },
                                  kaslrSeed: 0x1122_3344_5566_7788)
        return (try board.deviceTree(), ExpectedSource(cpus: cpus, devices: devices, initrd: initrdRange, gic: gic))
    }
}

@Suite struct DeviceTreeToolTests {
    @Test(.enabled(if: DeviceTreeTools.dtc != nil, "dtc is missing: apt-get install device-tree-compiler (tools/install-deps.sh)"),
          arguments: DeviceTreeConfiguration.all)
    func dtcDecompilesWhatTheTestExpects(_ configuration: DeviceTreeConfiguration) throws {
        let (blob, expected) = try configuration.build()
        let result = try DeviceTreeTools.withTemporaryFile(blob) { path in
            try DeviceTreeTools.run([DeviceTreeTools.dtc!, "-I", "dtb", "-O", "dts", path])
        }
        #expect(result.status == 0)
        #expect(result.errors.isEmpty, "dtc warned: \(result.errors)")
        let actual = parseDecompiled(result.output)
        let wanted = expected.nodes
        #expect(actual.map(\.path) == wanted.map(\.path))
        for (node, want) in zip(actual, wanted) where node.path == want.path {
            #expect(node.properties == want.properties, "node \(node.path)")
        }
    }

    @Test(.enabled(if: DeviceTreeTools.dtValidate != nil && DeviceTreeTools.processedSchema != nil,
                   "dtschema \(DeviceTreeTools.dtschemaVersion) or the processed bindings are missing from \(DeviceTreeTools.cache)/dtschema (tools/setup-devicetree-tools.sh)"))
    func dtValidateReportsNoErrors() throws {
        for configuration in DeviceTreeConfiguration.all {
            let (blob, _) = try configuration.build()
            let result = try DeviceTreeTools.withTemporaryFile(blob) { path in
                try DeviceTreeTools.run([DeviceTreeTools.dtValidate!, "-s", DeviceTreeTools.processedSchema!, path])
            }
            // dt-validate exits 0 even when a node fails its schema: what it prints is the verdict.
            #expect(result.status == 0, "\(configuration.testDescription)")
            #expect(result.output.isEmpty && result.errors.isEmpty,
                    "\(configuration.testDescription): \(result.output)\(result.errors)")
        }
    }

    @Test(.enabled(if: DeviceTreeTools.dtValidate != nil && DeviceTreeTools.processedSchema != nil,
                   "dtschema or the processed bindings are missing (tools/setup-devicetree-tools.sh)"))
    func dtValidateCatchesABrokenTree() throws {
        // The same checker must object to a tree that breaks a binding, or its silence above proves nothing.
        var writer = try FDTWriter()
        try writer.beginNode("")
        try writer.property("compatible", string: "linux,dummy-virt")
        try writer.property("model", string: "broken")
        try writer.property("#address-cells", u32: 2)
        try writer.property("#size-cells", u32: 2)
        try writer.beginNode("psci")
        try writer.property("compatible", string: "arm,psci-0.2")
        try writer.property("method", string: "svc") // neither hvc nor smc
        try writer.endNode()
        try writer.endNode()
        let result = try DeviceTreeTools.withTemporaryFile(try writer.finish()) { path in
            try DeviceTreeTools.run([DeviceTreeTools.dtValidate!, "-s", DeviceTreeTools.processedSchema!, path])
        }
        #expect((result.output + result.errors).contains("psci"))
    }
}
