import ArgumentParser
import Glibc
import Swiftlet

extension GuestArchitecture: ExpressibleByArgument {}
extension InterruptControllerVersion: ExpressibleByArgument {}

/// `swiftlet describe`: what a guest would be handed at boot, without booting it.
struct Describe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe the machine a VM would get, without starting it.",
        discussion: """
            Takes the same machine options as `swiftlet run` and prints the layout the guest would see: memory, vCPUs, \
            virtio-mmio windows and interrupts, and where the kernel, initrd and boot structures go. For aarch64, --dtb \
            writes the flattened device tree the guest would boot with (decompile it with `dtc -I dtb -O dts FILE`). \
            For x86_64, the report shows the kernel command line, the e820 map and the MP table as the guest gets them. \
            Nothing is started and /dev/kvm is not opened, so any host can describe either architecture.
            """)

    @Option(name: .long, help: ArgumentHelp("The guest architecture (default: this host's).", valueName: "aarch64|x86_64"))
    var arch: GuestArchitecture?

    @Option(name: .long, help: ArgumentHelp("Where to write the aarch64 device tree blob.", valueName: "path"))
    var dtb: String?

    @Option(name: .long, help: ArgumentHelp("aarch64: the interrupt controller to describe.", valueName: "gicv3|gicv2"))
    var gic: InterruptControllerVersion = .gicV3

    @Option(name: .long, help: ArgumentHelp("aarch64: derive rng-seed and kaslr-seed from this number instead of the kernel's random source, for a reproducible tree.", valueName: "n"))
    var seed: UInt64?

    @OptionGroup(title: "Machine (as for run; no disk, TAP, socket or /dev/kvm is opened)")
    var machine: MachineOptions

    func run() throws {
        guard let architecture = arch ?? GuestArchitecture.host else {
            Self.fail("this host is neither x86_64 nor aarch64: pass --arch")
        }
        if dtb != nil && architecture == .x86_64 {
            Self.fail("an x86_64 guest gets no device tree (it is described by boot_params, the command line and the MP table): drop --dtb")
        }
        // The machine `run` would build from the same options (--kernel is optional here: without it the aarch64
        // tree is built, but nothing is placed).
        let configuration: MachineConfiguration
        do {
            configuration = try machine.configuration(console: "none", commandLine: MachineConfiguration.defaultCommandLine,
                                                      requireKernel: false)
        } catch {
            Self.fail("\(error)")
        }
        Self.print(configuration, architecture: architecture, interruptController: gic, seed: seed, dtb: dtb)
    }

    /// Prints what the guest of `configuration` would see (and writes its device tree to `dtb`): `describe`'s
    /// output, which `swiftlet firecracker --describe` prints for the machine its configuration file builds.
    static func print(_ configuration: MachineConfiguration, architecture: GuestArchitecture,
                      interruptController gic: InterruptControllerVersion = .gicV3, seed: UInt64? = nil, dtb: String? = nil) {
        let description: BootDescription
        do {
            description = try BootDescription(configuration, architecture: architecture, interruptController: gic, seed: seed)
        } catch {
            fail(error.description)
        }
        if let dtb, let tree = description.deviceTree {
            write(tree, to: dtb)
        }
        var report = description.report
        report.withUTF8 { _ = Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
    }

    private static func write(_ bytes: [UInt8], to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { fail("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            unlink(path)
            fail("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    private static func fail(_ message: String) -> Never {
        Run.report("error: " + message)
        Glibc.exit(1)
    }
}
