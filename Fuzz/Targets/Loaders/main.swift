import FuzzSupport
import SwiftletBoot
import SwiftletMemory

// The kernel loaders over fuzzed files: the x86_64 bzImage and ELF vmlinux loader (told apart by magic, as
// `swiftlet run --kernel` does) and the arm64 Image header, boot plan and loader. The first byte picks the loader.

let x86Size: UInt64 = 64 << 20
let arm64RAM = MachineDescription.MemoryRegion(start: GuestAddress(0x4000_0000), size: 32 << 20)
nonisolated(unsafe) let x86Memory = try! GuestMemory(layout: [(GuestAddress(0), x86Size)])
nonisolated(unsafe) let arm64Memory = try! GuestMemory(layout: [(arm64RAM.start, arm64RAM.size)])
/// A loader parses headers and copies the file: it allocates the header bytes it reads (a few KiB at most), never
/// in proportion to sizes the file declares.
nonisolated let memoryBound = 256 << 10

Fuzz.main { input in
    let selector = input.u8()
    let file = Array(input.rest())
    Fuzz.beginMemoryAccounting()
    if selector & 1 == 0 {
        var bytes = file
        // Half the inputs get the magic numbers that pass the first checks, so the fuzzer works on what follows.
        if selector & 2 != 0, bytes.count >= 0x210 { bytes[0x1fe] = 0x55; bytes[0x1ff] = 0xaa; bytes[0x202...0x205] = [0x48, 0x64, 0x72, 0x53] }
        if selector & 4 != 0, bytes.count >= 64 { bytes[0...3] = [0x7f, 0x45, 0x4c, 0x46]; bytes[4] = 2; bytes[5] = 1; bytes[0x12] = 0x3e; bytes[0x13] = 0 }
        if let kernel = try? KernelLoader.load(BytesBootSource(bytes), into: x86Memory) {
            Fuzz.check(kernel.start < kernel.end && x86Memory.contains(kernel.start, count: kernel.end.rawValue - kernel.start.rawValue),
                       "a kernel loaded at \(kernel.start)..<\(kernel.end), outside guest memory")
            Fuzz.check(kernel.entry >= kernel.start && kernel.entry < kernel.end, "entry \(kernel.entry) outside the loaded kernel")
            Fuzz.check(kernel.commandLineLimit > 0 && kernel.commandLineLimit <= 1 << 20, "a command line limit of \(kernel.commandLineLimit)")
        }
    } else {
        var bytes = file
        if selector & 2 != 0, bytes.count >= 64 { bytes[56...59] = [0x41, 0x52, 0x4d, 0x64] }
        let source = BytesBootSource(bytes)
        guard let header = try? AArch64ImageLoader.header(of: source) else { return }
        let initrdSize: UInt64? = selector & 4 != 0 ? UInt64(selector >> 3) << 16 : nil
        guard let plan = try? AArch64BootPlan(header: header, ram: arm64RAM, initrdSize: initrdSize) else { return }
        Fuzz.check(plan.kernel >= arm64RAM.start && plan.kernelEnd <= plan.deviceTree && plan.deviceTree < arm64RAM.end,
                   "a boot plan outside RAM: kernel \(plan.kernel)..<\(plan.kernelEnd), device tree \(plan.deviceTree)")
        Fuzz.check(plan.kernel.rawValue + UInt64(bytes.count) <= plan.kernelEnd.rawValue, "an Image of \(bytes.count) bytes over its image_size")
        if let initrd = plan.initrd {
            Fuzz.check(initrd.start >= plan.kernelEnd && initrd.start.rawValue + initrd.size <= plan.deviceTree.rawValue, "the initrd overlaps")
        }
        let initrd: BytesBootSource? = initrdSize.map { _ in BytesBootSource([]) }
        _ = try? AArch64ImageLoader.load(kernel: source, initrd: initrd, plan: plan, into: arm64Memory)
    }
    Fuzz.checkMemory(bound: memoryBound + 2 * file.count, "the kernel loaders")
}
