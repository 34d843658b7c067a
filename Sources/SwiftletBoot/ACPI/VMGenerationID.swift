import SwiftletHost
import SwiftletMemory

/// The VM generation ID: 16 random bytes at `X86Layout.vmGenerationID`, which the DSDT's VGEN device points to.
/// Linux's vmgenid driver mixes them into its random pool at probe; when they change and the GED's interrupt tells
/// it so (after a restore: every clone gets its own), it reseeds its RNG at once ("crng reseeded due to virtual
/// machine fork"), so that clones of one snapshot do not share the random state the snapshot froze.
public enum VMGenerationID {
    /// Writes a new random ID into guest memory and returns it.
    @discardableResult
    public static func renew(in memory: GuestMemory) throws(SwiftletError) -> [UInt8] {
        var id = [UInt8](repeating: 0, count: X86Layout.vmGenerationIDSize)
        var failure: SwiftletError?
        id.withUnsafeMutableBytes { buffer in
            do throws(SwiftletError) { try fillRandom(buffer) } catch { failure = error }
        }
        if let failure { throw failure }
        do { try memory.write(id, at: X86Layout.vmGenerationID) } catch {
            throw SwiftletError(.guestMemory, "the VM generation ID at 0x\(String(X86Layout.vmGenerationID.rawValue, radix: 16)) is outside guest RAM")
        }
        return id
    }
}
