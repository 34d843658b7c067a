// swift-tools-version:6.0
import PackageDescription

// Dependencies point down this list: the CLI on the library, the library on the machine parts, and every part on
// SwiftletHost, the only module that makes raw system calls (through the CSwiftlet shim).
let package = Package(
    name: "Swiftlet",
    products: [
        .library(name: "Swiftlet", targets: ["Swiftlet"]),
        .executable(name: "swiftlet", targets: ["swiftlet"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(name: "CSwiftlet", cSettings: [.define("_GNU_SOURCE")]),
        // libfdt builds the device tree an aarch64 guest is described by (Debian's libfdt-dev has no .pc file).
        .systemLibrary(name: "CLibFDT", providers: [.apt(["libfdt-dev"])]),
        .target(name: "SwiftletHost", dependencies: ["CSwiftlet", .product(name: "SystemPackage", package: "swift-system")]),
        // libseccomp (Debian's libseccomp-dev; the static executable links its libseccomp.a) and the SIGSYS reporter.
        .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),
        // The jail's child between clone and execve, and the system calls glibc does not wrap.
        .target(name: "CJail"),
        // Per-thread seccomp filters and the jail: what a thread may still do once set-up is done, and what it can see.
        .target(name: "SwiftletConfinement", dependencies: ["CSeccomp", "CJail", "CSwiftlet", "SwiftletHost", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "SwiftletMemory", dependencies: ["SwiftletHost"]),
        // The snapshot state file: its format and the record codec every component saves its state with.
        .target(name: "SwiftletSnapshot"),
        .target(name: "SwiftletKVM", dependencies: ["SwiftletHost", "SwiftletMemory", "SwiftletSnapshot", "CSwiftlet"]),
        .target(name: "SwiftletBoot", dependencies: ["SwiftletMemory", "CLibFDT"]),
        .target(name: "SwiftletVirtio", dependencies: ["SwiftletHost", "SwiftletMemory", "SwiftletSnapshot", "CSwiftlet"]),
        .target(name: "SwiftletDevices", dependencies: ["SwiftletVirtio", "SwiftletMemory", "SwiftletSnapshot", "SwiftletHost"]),
        .target(name: "Swiftlet", dependencies: ["SwiftletBoot", "SwiftletDevices", "SwiftletVirtio", "SwiftletKVM", "SwiftletMemory", "SwiftletSnapshot", "SwiftletConfinement", "SwiftletHost", .product(name: "SystemPackage", package: "swift-system")]),
        // Firecracker's REST API and JSON configuration on top of the library: the one module with JSON and NIO.
        .target(name: "SwiftletFirecracker", dependencies: ["Swiftlet", "SwiftletDevices", "SwiftletHost", .product(name: "SystemPackage", package: "swift-system"),
                                                           .product(name: "NIOCore", package: "swift-nio"),
                                                           .product(name: "NIOPosix", package: "swift-nio"),
                                                           .product(name: "NIOHTTP1", package: "swift-nio")]),
        .executableTarget(name: "swiftlet", dependencies: ["Swiftlet", "SwiftletFirecracker", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "SwiftletMemoryTests", dependencies: ["SwiftletMemory"]),
        .testTarget(name: "SwiftletBootTests", dependencies: ["SwiftletBoot", "SwiftletMemory", "SwiftletHost", "CLibFDT"]),
        // Fake guest memory with a driver-side view of a virtqueue, shared by the device and virtio tests.
        .target(name: "SwiftletTestSupport", dependencies: ["SwiftletVirtio", "SwiftletMemory", "SwiftletHost"],
                path: "Tests/SwiftletTestSupport"),
        .testTarget(name: "SwiftletDevicesTests", dependencies: ["SwiftletDevices", "SwiftletSnapshot", "SwiftletTestSupport", "SwiftletVirtio", "SwiftletMemory", "SwiftletHost"]),
        .testTarget(name: "SwiftletVirtioTests", dependencies: ["SwiftletVirtio", "SwiftletSnapshot", "SwiftletTestSupport", "SwiftletMemory", "SwiftletHost"]),
        .testTarget(name: "SwiftletKVMTests", dependencies: ["SwiftletKVM", "SwiftletSnapshot", "CSwiftlet", "SwiftletHost", "SwiftletMemory"]),
        .testTarget(name: "SwiftletSnapshotTests", dependencies: ["SwiftletSnapshot"]),
        .testTarget(name: "SwiftletTests", dependencies: ["Swiftlet", "SwiftletHost"]),
        .testTarget(name: "SwiftletFirecrackerTests", dependencies: ["SwiftletFirecracker", "Swiftlet"]),
        .testTarget(name: "SwiftletHostTests", dependencies: ["SwiftletHost"]),
        .testTarget(name: "SwiftletConfinementTests", dependencies: ["SwiftletConfinement", "SwiftletHost"]),
    ]
)

// Fuzz targets (libFuzzer), only when SWIFTLET_FUZZ is set: `make fuzz` builds them with
// -sanitize=fuzzer,address in their own scratch directory (tools/fuzz.sh). A plain build never sees them.
if Context.environment["SWIFTLET_FUZZ"] != nil {
    package.targets += [
        .target(name: "CFuzzSupport", path: "Fuzz/CFuzzSupport"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzSupport", "SwiftletVirtio", "SwiftletMemory", "SwiftletHost"],
                path: "Fuzz/FuzzSupport"),
        .executableTarget(name: "FuzzQueue", dependencies: ["FuzzSupport", "SwiftletVirtio", "SwiftletMemory"], path: "Fuzz/Targets/Queue"),
        .executableTarget(name: "FuzzPacked", dependencies: ["FuzzSupport", "SwiftletVirtio", "SwiftletMemory"], path: "Fuzz/Targets/Packed"),
        .executableTarget(name: "FuzzMmio", dependencies: ["FuzzSupport", "SwiftletDevices", "SwiftletVirtio"], path: "Fuzz/Targets/Mmio"),
        .executableTarget(name: "FuzzBlock", dependencies: ["FuzzSupport", "SwiftletDevices", "SwiftletVirtio"], path: "Fuzz/Targets/Block"),
        .executableTarget(name: "FuzzNet", dependencies: ["FuzzSupport", "SwiftletDevices", "SwiftletVirtio", "SwiftletHost"], path: "Fuzz/Targets/Net"),
        .executableTarget(name: "FuzzVsock", dependencies: ["FuzzSupport", "SwiftletDevices", "SwiftletVirtio", "SwiftletHost"], path: "Fuzz/Targets/Vsock"),
        .executableTarget(name: "FuzzBalloon", dependencies: ["FuzzSupport", "SwiftletDevices", "SwiftletVirtio"], path: "Fuzz/Targets/Balloon"),
        .executableTarget(name: "FuzzLoaders", dependencies: ["FuzzSupport", "SwiftletBoot", "SwiftletMemory"], path: "Fuzz/Targets/Loaders"),
    ]
}
