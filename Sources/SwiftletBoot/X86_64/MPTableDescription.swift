extension MPTable {
    /// A readable account of an MP configuration table's entries (processors, buses, IOAPICs, interrupt
    /// assignments), decoded from the bytes the guest gets, for `swiftlet describe`.
    public static func describe(_ table: [UInt8]) -> [String] {
        guard table.count >= headerSize, Array(table[0..<4]) == Array("PCMP".utf8) else { return ["mptable: not an MP table"] }
        var lines = ["mptable oem \(String(decoding: table[8..<16], as: UTF8.self)) product \(String(decoding: table[16..<28], as: UTF8.self).trimmingSpaces) local-apic 0x\(String(table.le(UInt32.self, 36), radix: 16)) entries \(table.le(UInt16.self, 34)) checksum-ok \(table.reduce(0, &+) == 0)"]
        var offset = headerSize
        var interruptSources: [String] = []
        while offset < table.count {
            switch table[offset] {
            case 0 where offset + 20 <= table.count:
                let flags = table[offset + 3]
                lines.append("mptable cpu apic-id \(table[offset + 1])\(flags & 1 != 0 ? " enabled" : "")\(flags & 2 != 0 ? " bootstrap" : "")")
                offset += 20
            case 1 where offset + 8 <= table.count:
                lines.append("mptable bus \(table[offset + 1]) \(String(decoding: table[(offset + 2)..<(offset + 8)], as: UTF8.self).trimmingSpaces)")
                offset += 8
            case 2 where offset + 8 <= table.count:
                lines.append("mptable ioapic id \(table[offset + 1]) at 0x\(String(table.le(UInt32.self, offset + 4), radix: 16))")
                offset += 8
            case 3 where offset + 8 <= table.count:
                interruptSources.append("\(table[offset + 5])->\(table[offset + 7])")
                offset += 8
            case 4 where offset + 8 <= table.count:
                lines.append("mptable local-interrupt type \(table[offset + 1]) lint\(table[offset + 7]) apic 0x\(String(table[offset + 6], radix: 16))")
                offset += 8
            default:
                lines.append("mptable: unknown entry type \(table[offset]) at offset \(offset)")
                return lines
            }
        }
        lines.append("mptable isa-irq->ioapic-pin " + interruptSources.joined(separator: " "))
        return lines
    }
}

extension String {
    var trimmingSpaces: String {
        var text = Substring(self)
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}
