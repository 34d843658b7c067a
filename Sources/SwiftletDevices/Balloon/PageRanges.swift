/// A run of consecutive 4 KiB guest page frames.
public struct PageRange: Sendable, Equatable {
    public var first: UInt64
    public var count: UInt64

    public init(first: UInt64, count: UInt64) {
        self.first = first
        self.count = count
    }
}

/// Turns the page frame numbers of a balloon request into sorted runs of consecutive frames, so that releasing
/// them costs one madvise per run rather than one per 4 KiB page. Duplicates collapse into one page.
public enum PageRanges {
    /// Sorts `frames` in place (it is the caller's scratch buffer) and appends the runs to `ranges`.
    public static func merge(_ frames: inout [UInt64], into ranges: inout [PageRange]) {
        frames.sort()
        for frame in frames {
            if let last = ranges.last, frame >= last.first, frame < last.first + last.count {
                continue // a duplicate
            }
            if let last = ranges.last, last.first + last.count == frame {
                ranges[ranges.count - 1].count += 1
            } else {
                ranges.append(PageRange(first: frame, count: 1))
            }
        }
    }

    /// The part of `[start, start + length)` (bytes) made of whole pages of `pageSize` bytes: what can be released
    /// on a host whose pages are bigger than 4 KiB. nil when no whole host page lies inside.
    public static func wholePages(start: UInt64, length: UInt64, pageSize: UInt64) -> (start: UInt64, length: UInt64)? {
        let end = start + length
        let alignedStart = (start + pageSize - 1) / pageSize * pageSize
        let alignedEnd = end / pageSize * pageSize
        guard alignedEnd > alignedStart else { return nil }
        return (alignedStart, alignedEnd - alignedStart)
    }
}
