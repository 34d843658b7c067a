import SwiftletHost
import SwiftletMemory

/// The ACPI tables of an x86_64 machine, derived from its `MachineDescription` (the same one the command line, MP
/// table and e820 map come from, so they cannot disagree): RSDP (revision 2), XSDT, FADT (hardware-reduced, with the
/// sleep and reset registers), MADT (a local APIC per vCPU, the IOAPIC) and a DSDT (COM1, each virtio-mmio device as
/// LNRO0005, the VM generation ID and the Generic Event Device that announces a new one, and \_S5). They lie together from `X86Layout.acpiTables`, the RSDP first, where a kernel's scan of
/// 0xE0000-0xFFFFF finds it (and `boot_params.acpi_rsdp_addr` names it).
public struct ACPITables: Equatable, Sendable {
    /// A table and where it goes.
    public struct Table: Equatable, Sendable {
        public var signature: String
        public var address: GuestAddress
        public var bytes: [UInt8]
    }

    /// RSDP, XSDT, FADT, MADT, DSDT, in address order.
    public var tables: [Table]
    public var rsdp: GuestAddress { tables[0].address }
    /// Where the tables end (the e820 map reserves [X86Layout.acpiTables, end)).
    public var end: GuestAddress { GuestAddress(tables.last.map { $0.address.rawValue + UInt64($0.bytes.count) } ?? X86Layout.acpiTables.rawValue) }

    public static let oemID = "SWIFTL"
    public static let oemTableID = "SWIFTLET"
    /// The value `\_S5`'s SLP_TYP gives: a write of (5 << 2) | SLP_EN to the sleep control register powers off.
    public static let sleepTypeS5: UInt8 = 5

    public init(_ machine: MachineDescription) throws(SwiftletError) {
        guard machine.architecture == .x86_64 else {
            throw SwiftletError(.invalidConfiguration, "ACPI tables are built for x86_64 machines; \(machine.architecture.rawValue) boots from a device tree")
        }
        guard machine.cpus >= 1, machine.cpus <= 254 else {
            throw SwiftletError(.invalidConfiguration, "\(machine.cpus) vCPUs do not fit the MADT's 8-bit APIC IDs (1 to 254)")
        }
        var tables: [Table] = []
        var next = X86Layout.acpiTables.rawValue
        func place(_ size: Int) -> GuestAddress {
            let address = GuestAddress(next)
            next = (next + UInt64(size) + 15) & ~15
            return address
        }
        let dsdt = ACPITables.dsdt(machine)
        let madt = ACPITables.madt(cpus: machine.cpus)
        let rsdpAddress = place(36)
        let xsdtAddress = place(36 + 16)
        let fadtAddress = place(276)
        let madtAddress = place(madt.count)
        let dsdtAddress = place(dsdt.count)
        guard next <= X86Layout.acpiTablesEnd.rawValue else {
            throw SwiftletError(.invalidConfiguration, "the ACPI tables (\(next - X86Layout.acpiTables.rawValue) bytes) do not fit below 1 MiB")
        }
        tables.append(Table(signature: "RSDP", address: rsdpAddress, bytes: ACPITables.rsdp(xsdt: xsdtAddress)))
        tables.append(Table(signature: "XSDT", address: xsdtAddress,
                            bytes: ACPITables.table("XSDT", revision: 1, body: fadtAddress.rawValue.littleEndianBytes + madtAddress.rawValue.littleEndianBytes)))
        tables.append(Table(signature: "FACP", address: fadtAddress, bytes: ACPITables.fadt(dsdt: dsdtAddress)))
        tables.append(Table(signature: "APIC", address: madtAddress, bytes: madt))
        tables.append(Table(signature: "DSDT", address: dsdtAddress, bytes: dsdt))
        self.tables = tables
    }

    /// Writes every table into guest memory.
    public func write(into memory: GuestMemory) throws(SwiftletError) {
        for table in tables {
            do { try memory.write(table.bytes, at: table.address) } catch {
                throw SwiftletError(.guestMemory, "the ACPI \(table.signature) at 0x\(String(table.address.rawValue, radix: 16)) is outside guest RAM")
            }
        }
    }

    /// The system description table header (36 bytes) and `body`, with the length and checksum filled in.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes = Array(signature.utf8)
        bytes += UInt32(36 + body.count).littleEndianBytes
        bytes += [revision, 0]                                  // checksum below
        bytes += ACPITables.padded(oemID, 6) + ACPITables.padded(oemTableID, 8)
        bytes += UInt32(1).littleEndianBytes                   // OEM revision
        bytes += Array("SWFT".utf8)                            // creator ID
        bytes += UInt32(1).littleEndianBytes                   // creator revision
        bytes += body
        bytes[9] = ACPITables.checksum(bytes)
        return bytes
    }

    /// The byte that makes `bytes` sum to zero (mod 256), given that the checksum byte itself is 0 in `bytes`.
    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
        0 &- bytes.reduce(UInt8(0), &+)
    }

    static func padded(_ text: String, _ count: Int) -> [UInt8] {
        Array((Array(text.utf8) + [UInt8](repeating: 0x20, count: count)).prefix(count))
    }

    /// RSDP revision 2 (36 bytes): no RSDT, the XSDT's address; the first 20 bytes and all 36 have checksums.
    static func rsdp(xsdt: GuestAddress) -> [UInt8] {
        var bytes = Array("RSD PTR ".utf8) + [0] + padded(oemID, 6) + [2]
        bytes += UInt32(0).littleEndianBytes                    // RsdtAddress: none
        bytes += UInt32(36).littleEndianBytes
        bytes += xsdt.rawValue.littleEndianBytes
        bytes += [0, 0, 0, 0]                                   // extended checksum, reserved
        bytes[8] = checksum(bytes[0..<20])
        bytes[32] = checksum(bytes)
        return bytes
    }

    /// A Generic Address Structure: one byte in the system I/O space.
    static func ioRegister(_ port: UInt16) -> [UInt8] {
        [1, 8, 0, 1] + UInt64(port).littleEndianBytes
    }

    /// FADT revision 6 (276 bytes): HW_REDUCED_ACPI with the sleep control and status registers and the reset
    /// register; no SCI, PM blocks or GPEs.
    static func fadt(dsdt: GuestAddress) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 276 - 36)
        func set(_ bytes: [UInt8], at offset: Int) { body.replaceSubrange((offset - 36)..<(offset - 36 + bytes.count), with: bytes) }
        // IAPC_BOOT_ARCH: an 8042 (the reset line), no VGA, no MSI, no CMOS RTC.
        set(UInt16(1 << 1 | 1 << 2 | 1 << 3 | 1 << 5).littleEndianBytes, at: 109)
        // Flags: WBINVD (bit 0), RESET_REG_SUP (10), HW_REDUCED_ACPI (20).
        set(UInt32(1 << 0 | 1 << 10 | 1 << 20).littleEndianBytes, at: 112)
        set(ioRegister(X86Layout.acpiResetPort), at: 116)
        set([X86Layout.acpiResetValue], at: 128)
        set([5], at: 131)                                      // FADT minor version: ACPI 6.5
        set(dsdt.rawValue.littleEndianBytes, at: 140)          // X_DSDT (DSDT stays 0)
        set(ioRegister(X86Layout.acpiSleepControlPort), at: 244)
        set(ioRegister(X86Layout.acpiSleepStatusPort), at: 256)
        set(Array("SWIFTLET".utf8), at: 268)                   // hypervisor vendor identity
        return table("FACP", revision: 6, body: body)
    }

    /// MADT: the local APIC address, PCAT_COMPAT (KVM's irqchip has the 8259 pair), one enabled local APIC per vCPU
    /// (APIC ID and processor UID = the vCPU's index), the IOAPIC (ID = the vCPU count, as in the MP table, GSI base
    /// 0) and LINT1 as NMI on every processor. ISA interrupts map to the IOAPIC's pins one to one, as in the MP
    /// table, so there are no interrupt source overrides.
    static func madt(cpus: Int) -> [UInt8] {
        var body = UInt32(truncatingIfNeeded: X86Layout.localApic.rawValue).littleEndianBytes + UInt32(1).littleEndianBytes
        for cpu in 0..<cpus {
            body += [0, 8, UInt8(cpu), UInt8(cpu)] + UInt32(1).littleEndianBytes
        }
        body += [1, 12, UInt8(cpus), 0] + UInt32(truncatingIfNeeded: X86Layout.ioapic.rawValue).littleEndianBytes + UInt32(0).littleEndianBytes
        body += [4, 6, 0xff] + UInt16(0).littleEndianBytes + [1]
        return table("APIC", revision: 5, body: body)
    }

    /// The DSDT: \_SB with COM1, the i8042's keyboard (PS2K), pvpanic (PEVT), the VM generation ID (VGEN) and its
    /// Generic Event Device (GED), one LNRO0005 device per virtio-mmio slot (named V000, V001, ...), and \_S5.
    static func dsdt(_ machine: MachineDescription) -> [UInt8] {
        var devices: [AML] = [
            .device("COM1", [.name("_HID", .eisaID("PNP0501")), .name("_UID", .integer(1)),
                             .name("_CRS", .resources([.io(base: UInt16(X86Layout.serialPort), length: 8), .irq(UInt8(X86Layout.serialIRQ))]))]),
            // The i8042's keyboard (PNP0303): a kernel without the legacy PIC (hardware-reduced ACPI) maps IRQ 1 only
            // for a device that names it, so without this Linux's i8042 driver cannot request its interrupt.
            .device("PS2K", [.name("_HID", .eisaID("PNP0303")),
                             .name("_CRS", .resources([.io(base: 0x60, length: 1), .io(base: 0x64, length: 1), .irq(1)]))]),
            // pvpanic (QEMU's QEMU0001, which Linux's pvpanic-mmio driver binds by its port resource).
            .device("PEVT", [.name("_HID", .string("QEMU0001")),
                             .name("_CRS", .resources([.io(base: X86Layout.pvpanicPort, length: 1)]))]),
            // The VM generation ID (Linux's vmgenid driver binds VMGENCTR, Windows the VM_Gen_Counter compatible ID):
            // ADDR is the 16 bytes' guest-physical address, low and high DWords.
            .device(generationIDDevice, [
                .name("_HID", .string("VMGENCTR")), .name("_CID", .string("VM_Gen_Counter")), .name("_DDN", .string("VM_Gen_Counter")),
                .name("ADDR", .package([.integer(X86Layout.vmGenerationID.rawValue & 0xffff_ffff), .integer(X86Layout.vmGenerationID.rawValue >> 32)])),
            ]),
            // The Generic Event Device (ACPI0013, Linux's evged): its interrupt makes the guest evaluate _EVT with
            // the interrupt's number, which tells VGEN that its ID changed (Notify 0x80; the driver then reads it).
            .device("GED", [
                .name("_HID", .string("ACPI0013")), .name("_UID", .integer(0)),
                .name("_CRS", .resources([.interrupt(X86Layout.acpiEventIRQ)])),
                .method("_EVT", arguments: 1, [
                    .ifThen(.equal(.argument(0), .integer(UInt64(X86Layout.acpiEventIRQ))), [.notify("\\_SB." + generationIDDevice, .integer(0x80))]),
                ]),
            ]),
        ]
        for (index, device) in machine.virtioDevices.enumerated() {
            devices.append(.device(ACPITables.virtioDeviceName(index), [
                .name("_HID", .string("LNRO0005")),
                .name("_UID", .integer(UInt64(index))),
                .name("_CCA", .integer(1)),                    // cache-coherent DMA
                .name("_CRS", .resources([.memory32Fixed(base: UInt32(truncatingIfNeeded: device.window.start.rawValue),
                                                         length: UInt32(truncatingIfNeeded: device.window.size)),
                                          .interrupt(device.interrupt)])),
            ]))
        }
        let terms: [AML] = [.scope("\\_SB", devices), .name("\\_S5", .package([.integer(UInt64(sleepTypeS5)), .integer(0)]))]
        return table("DSDT", revision: 2, body: terms.flatMap(\.encoded))
    }
}

extension ACPITables {
    /// The VM generation ID device's name in \_SB.
    public static let generationIDDevice = "VGEN"

    /// The DSDT's name for virtio-mmio slot `index`: V000, V001, ... V012 (AML names are four characters; three
    /// hexadecimal digits are room for 4096 slots).
    public static func virtioDeviceName(_ index: Int) -> String {
        let digits = String(index, radix: 16, uppercase: true)
        return "V" + String(repeating: "0", count: max(0, 3 - digits.count)) + digits
    }
}
