/// Firecracker endpoints Swiftlet does not implement, each refused with a `400` that names it and says why, rather
/// than a 404 or a hang. The README's endpoint table lists the same reasons.
enum Refusals {
    static func reason(for parts: [String]) -> String? {
        guard let first = parts.first else { return nil }
        let path = "/" + parts.joined(separator: "/")
        switch first {
        case "snapshot" where parts.count != 2 || !["create", "load"].contains(parts[1]):
            return "\(path) is not an endpoint: the snapshot endpoints are /snapshot/create and /snapshot/load"
        case "mmds":
            return "\(path) is not supported: Swiftlet has no microVM metadata service (MMDS); pass data to the guest over vsock or the kernel command line"
        case "cpu-config":
            return "\(path) is not supported: Swiftlet has no CPU templates; the guest sees the host's CPUID as KVM reports it"
        case "hotplug":
            return "\(path) is not supported: Swiftlet has no memory hot-plug; size the guest with machine-config and give memory back with the balloon"
        case "pmem":
            return "\(path) is not supported: Swiftlet has no virtio-pmem device; attach the image as a drive"
        case "serial":
            return "\(path) is not supported: the guest's serial console goes to Swiftlet's standard output"
        case "balloon" where parts.count >= 2 && parts[1] == "hinting":
            return "\(path) is not supported: Swiftlet's balloon has free page reporting (free_page_reporting), not free page hinting"
        default:
            return nil
        }
    }
}
