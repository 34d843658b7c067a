import Synchronization

/// One bit per guest page: the pages the host wrote (devices' DMA into guest buffers, used rings, the balloon's
/// discards, the VMM's own writes), which KVM's dirty log does not see because they do not go through the guest's
/// page tables. A diff snapshot writes the pages either this or KVM's log marks. Marks come from any thread (the
/// device loop, vCPU threads serving MMIO) and are atomic ORs; `take()` exchanges each word with 0.
public final class DirtyPages: Sendable {
    public let pageCount: Int
    public let wordCount: Int
    private nonisolated(unsafe) let words: UnsafeMutablePointer<Atomic<UInt64>>

    public init(pageCount: Int) {
        precondition(pageCount >= 0)
        self.pageCount = pageCount
        wordCount = (pageCount + 63) / 64
        words = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: max(wordCount, 1))
        for index in 0..<max(wordCount, 1) { (words + index).initialize(to: Atomic<UInt64>(0)) }
    }

    deinit {
        words.deinitialize(count: max(wordCount, 1))
        words.deallocate()
    }

    /// Marks pages `first..<first + count` (clamped to the bitmap: the caller has bounds-checked the access).
    public func mark(first: Int, count: Int) {
        guard count > 0, first >= 0, first < pageCount else { return }
        let end = min(pageCount, first + count)
        var page = first
        while page < end {
            let word = page / 64
            let low = page % 64
            let high = min(64, low + (end - page))
            let mask = high - low == 64 ? UInt64.max : ((UInt64(1) << UInt64(high - low)) - 1) << UInt64(low)
            words[word].bitwiseOr(mask, ordering: .relaxed)
            page += high - low
        }
    }

    /// The marks since the last `take()`, as 64-page words (bit i of word w is page 64w + i); they are cleared.
    public func take() -> [UInt64] {
        (0..<wordCount).map { words[$0].exchange(0, ordering: .acquiringAndReleasing) }
    }

    /// Whether `page` is marked (without taking the marks).
    public func isMarked(_ page: Int) -> Bool {
        guard page >= 0, page < pageCount else { return false }
        return words[page / 64].load(ordering: .relaxed) & (UInt64(1) << UInt64(page % 64)) != 0
    }
}
