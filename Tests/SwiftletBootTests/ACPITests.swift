import Foundation
@testable import SwiftletBoot
import SwiftletMemory
import Testing

/// The ACPI tables, checked by a tool nobody here wrote: Debian's acpica-tools (`iasl -d` disassembles every table
/// without an error or warning, and the source it prints says what the machine has), and by the rules a kernel
/// applies (checksums, the RSDP scan).
@Suite struct ACPITests {
    static var iasl: String? {
        ["/usr/bin/iasl", "/usr/local/bin/iasl"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    private func machine(cpus: Int, devices: Int) throws -> MachineDescription {
        try MachineDescription.layout(.x86_64, memorySize: 256 << 20, cpus: cpus,
                                      virtioDeviceNames: (0..<devices).map { "dev\($0)" }, commandLine: "console=ttyS0")
    }

    /// Disassembles `table` with iasl; returns the source and iasl's messages.
    private func disassemble(_ table: ACPITables.Table) throws -> (source: String, messages: String, status: Int32) {
        let iasl = try #require(ACPITests.iasl, "iasl is missing: apt-get install acpica-tools (tools/install-deps.sh does)")
        let directory = NSTemporaryDirectory() + "swiftlet-acpi-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/\(table.signature.lowercased()).dat"
        try Data(table.bytes).write(to: URL(fileURLWithPath: path))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: iasl)
        process.arguments = ["-d", path]
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let messages = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let source = (try? String(contentsOfFile: "\(directory)/\(table.signature.lowercased()).dsl", encoding: .utf8)) ?? ""
        return (source, messages, process.terminationStatus)
    }

    @Test func amlEncodings() {
        #expect(AML.packageLength(0) == [0x01])
        #expect(AML.packageLength(62) == [0x3f])
        #expect(AML.packageLength(63) == [0x41, 0x04])               // 65 = 0x41: low nibble 1, then 0x04
        #expect(AML.packageLength(4093) == [0x4f, 0xff])             // 4095, the most two bytes hold
        #expect(AML.packageLength(4094) == [0x81, 0x00, 0x01])       // 4097 = 0x1001
        #expect(AML.compressedEISAID("PNP0501") == 0x0105_d041)
        #expect(AML.compressedEISAID("PNP0A03") == 0x030a_d041)
        #expect(AML.integer(0).encoded == [0x00] && AML.integer(1).encoded == [0x01])
        #expect(AML.integer(5).encoded == [0x0a, 5])
        #expect(AML.integer(0x1234).encoded == [0x0b, 0x34, 0x12])
        #expect(AML.integer(0xd000_0000).encoded == [0x0c, 0x00, 0x00, 0x00, 0xd0])
        #expect(AML.integer(0x1_0000_0000).encoded == [0x0e, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(AML.string("LNRO0005").encoded == [0x0d] + Array("LNRO0005".utf8) + [0])
        #expect(AML.nameString("\\_SB") == [0x5c] + Array("_SB_".utf8))
        #expect(AML.nameString("_SB.V000") == [0x2e] + Array("_SB_V000".utf8))
        #expect(AML.nameString("\\A.B.C") == [0x5c, 0x2f, 3] + Array("A___B___C___".utf8))
        #expect(ACPITables.virtioDeviceName(0) == "V000" && ACPITables.virtioDeviceName(18) == "V012")
    }

    @Test func everyTableSumsToZero() throws {
        for (cpus, devices) in [(1, 0), (2, 1), (8, 8), (64, 18)] {
            let tables = try ACPITables(try machine(cpus: cpus, devices: devices))
            #expect(tables.tables.map(\.signature) == ["RSDP", "XSDT", "FACP", "APIC", "DSDT"])
            for table in tables.tables {
                #expect(table.bytes.reduce(UInt8(0), &+) == 0, "\(table.signature) with \(cpus) vCPUs and \(devices) devices")
                if table.signature == "RSDP" {
                    #expect(table.bytes.count == 36)
                    #expect(table.bytes[0..<20].reduce(UInt8(0), &+) == 0, "the RSDP's first 20 bytes")
                } else {
                    #expect(Array(table.bytes[0..<4]) == Array(table.signature.utf8))
                    #expect(UInt32(table.bytes[4]) | UInt32(table.bytes[5]) << 8 | UInt32(table.bytes[6]) << 16 == UInt32(table.bytes.count))
                }
                #expect(table.address.rawValue % 16 == 0)
            }
            #expect(tables.end.rawValue <= X86Layout.acpiTablesEnd.rawValue)
        }
    }

    /// The MADT lists exactly the configured vCPUs (APIC IDs 0..<cpus, enabled), then the IOAPIC.
    @Test func theMADTListsExactlyTheVCPUs() throws {
        for cpus in [1, 2, 8, 64] {
            let madt = try #require(try ACPITables(try machine(cpus: cpus, devices: 1)).tables.first { $0.signature == "APIC" }).bytes
            var offset = 44
            var apicIDs: [Int] = []
            var ioapics = 0
            while offset + 2 <= madt.count {
                let (type, length) = (madt[offset], Int(madt[offset + 1]))
                try #require(length >= 2 && offset + length <= madt.count)
                if type == 0 {
                    #expect(madt[offset + 4] & 1 == 1, "local APIC \(madt[offset + 3]) is enabled")
                    apicIDs.append(Int(madt[offset + 3]))
                }
                if type == 1 { ioapics += 1 }
                offset += length
            }
            #expect(offset == madt.count)
            #expect(apicIDs == Array(0..<cpus))
            #expect(ioapics == 1)
        }
    }

    /// A kernel without `acpi_rsdp_addr` scans 0xE0000-0xFFFFF on 16-byte boundaries for "RSD PTR " with a good
    /// checksum (drivers/acpi/acpica/tbxfroot.c); the scan finds ours, and it names the XSDT.
    @Test func theRSDPIsFoundByTheKernelsScan() throws {
        let tables = try ACPITables(try machine(cpus: 2, devices: 3))
        let base = 0xe0000
        var area = [UInt8](repeating: 0, count: 0x20000)
        for table in tables.tables {
            let start = Int(table.address.rawValue) - base
            area.replaceSubrange(start..<(start + table.bytes.count), with: table.bytes)
        }
        var found: Int?
        for offset in stride(from: 0, to: area.count - 36, by: 16)
        where Array(area[offset..<(offset + 8)]) == Array("RSD PTR ".utf8) && area[offset..<(offset + 20)].reduce(UInt8(0), &+) == 0 {
            found = base + offset
            break
        }
        #expect(found.map(UInt64.init) == tables.rsdp.rawValue)
        let xsdt = (0..<8).reduce(UInt64(0)) { $0 | UInt64(area[Int(tables.rsdp.rawValue) - base + 24 + $1]) << ($1 * 8) }
        #expect(xsdt == tables.tables[1].address.rawValue)
    }

    /// The tables land in guest memory where they say they are.
    @Test func theTablesAreWrittenWhereTheySay() throws {
        let description = try machine(cpus: 2, devices: 2)
        let memory = try GuestMemory(layout: description.memory.map { ($0.start, $0.size) })
        let tables = try ACPITables(description)
        try tables.write(into: memory)
        for table in tables.tables {
            #expect(try memory.read(count: table.bytes.count, at: table.address) == table.bytes, "\(table.signature)")
        }
    }

    /// iasl disassembles every table with no error or warning. (Not the RSDP, which has no table header: iasl
    /// refuses it as a file of its own; the checksum and scan tests above check it the way a kernel does.)
    @Test(arguments: [(1, 0), (2, 1), (8, 8)])
    func iaslReadsEveryTable(cpus: Int, devices: Int) throws {
        for table in try ACPITables(try machine(cpus: cpus, devices: devices)).tables where table.signature != "RSDP" {
            let (source, messages, status) = try disassemble(table)
            #expect(status == 0, "\(table.signature): iasl exit \(status): \(messages)")
            #expect(!source.isEmpty, "\(table.signature): no disassembly: \(messages)")
            for word in ["Error", "Warning", "Remark"] {
                #expect(!messages.contains(word), "\(table.signature): \(messages)")
                #expect(!source.contains("**** \(word)") && !source.contains("/**** ACPI subtable terminates early"), "\(table.signature): \(source)")
            }
        }
    }

    /// The DSDT iasl decodes names each device's window and interrupt, for 0, 1 and 8 devices, and COM1, pvpanic and \_S5.
    @Test(arguments: [0, 1, 8])
    func theDSDTListsEachDevice(devices: Int) throws {
        let description = try machine(cpus: 2, devices: devices)
        let dsdt = try #require(try ACPITables(description).tables.first { $0.signature == "DSDT" })
        let (source, messages, _) = try disassemble(dsdt)
        let compact = source.replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "\n", with: "")
        #expect(source.components(separatedBy: "\"LNRO0005\"").count - 1 == devices, "\(messages)")
        for (index, device) in description.virtioDevices.enumerated() {
            let name = ACPITables.virtioDeviceName(index)
            let window = String(format: "Memory32Fixed(ReadWrite,0x%08X,//AddressBase0x%08X,//AddressLength)", device.window.start.rawValue, device.window.size)
            let interrupt = String(format: "Interrupt(ResourceConsumer,Edge,ActiveHigh,Exclusive,,,){0x%08X,}", device.interrupt)
            #expect(compact.contains("Device(\(name))"), "\(name) in \(source)")
            #expect(compact.contains(window), "\(name)'s window in \(source)")
            #expect(compact.contains(interrupt), "\(name)'s interrupt in \(source)")
        }
        #expect(compact.contains("Device(COM1)") && compact.contains("EisaId(\"PNP0501\")"), "\(source)")
        #expect(compact.contains("IO(Decode16,0x03F8,//RangeMinimum0x03F8,//RangeMaximum0x00,//Alignment0x08,//Length)"), "\(source)")
        #expect(compact.contains("IRQNoFlags(){4}"), "\(source)")
        #expect(compact.contains("Device(PEVT){Name(_HID,\"QEMU0001\")"), "pvpanic in \(source)")
        #expect(compact.contains("Device(PS2K){Name(_HID,EisaId(\"PNP0303\")"), "the i8042's keyboard in \(source)")
        #expect(compact.contains("IO(Decode16,0x0060,//RangeMinimum0x0060,//RangeMaximum")
                && compact.contains("IO(Decode16,0x0064,//RangeMinimum0x0064,//RangeMaximum") && compact.contains("IRQNoFlags(){1}"),
                "the keyboard's ports and IRQ 1 in \(source)")
        #expect(compact.contains("IO(Decode16,0x0505,//RangeMinimum0x0505,//RangeMaximum0x00,//Alignment0x01,//Length)"), "\(source)")
        #expect(compact.contains("Name(\\_S5,Package(0x02)//_S5_:S5SystemState{0x05,Zero})"), "\(source)")
        // The VM generation ID at its reserved address, and the GED whose interrupt notifies it.
        #expect(compact.contains("Device(VGEN){Name(_HID,\"VMGENCTR\")") && compact.contains("Name(_CID,\"VM_Gen_Counter\")"), "\(source)")
        #expect(compact.contains("Name(ADDR,Package(0x02){0x000FF000,Zero})"), "VGEN.ADDR in \(source)")
        #expect(compact.contains("Device(GED){Name(_HID,\"ACPI0013\""), "\(source)")
        #expect(compact.contains("Interrupt(ResourceConsumer,Edge,ActiveHigh,Exclusive,,,){0x00000017,}"), "the GED's interrupt in \(source)")
        #expect(compact.contains("Method(_EVT,1,NotSerialized)") && compact.contains("If((Arg0==0x17)){Notify(\\_SB.VGEN,0x80)"), "GED._EVT in \(source)")
    }
}
