import SwiftletHost
import SwiftletMemory

/// What a vCPU finds at the reset vector (X86Layout.resetVector, F000:FFF0 in real mode). There is no firmware to
/// start: a jump there is a request to reset, so the code asks the i8042 for one (its pulse-reset command, which
/// every discovery mode has and which Swiftlet turns into a clean exit) and halts. Linux jumps there for
/// `reboot=b`, and as its last resort: on a hardware-reduced ACPI machine without EFI, its default reboot method is
/// EFI, which falls through to the BIOS one. Without this the vCPU would run whatever bytes lie there, forever.
public enum ResetVector {
    /// mov al, 0xfe; out 0x64, al; cli; hlt; jmp back to the hlt. Real-mode code, 8 bytes of the 16 below 1 MiB.
    public static let code: [UInt8] = [0xb0, 0xfe, 0xe6, 0x64, 0xfa, 0xf4, 0xeb, 0xfd]

    public static func write(into memory: GuestMemory) throws(SwiftletError) {
        try memory.write(code, at: X86Layout.resetVector)
    }
}
