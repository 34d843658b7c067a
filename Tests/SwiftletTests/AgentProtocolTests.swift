@testable import Swiftlet
import Testing

@Suite struct AgentProtocolTests {
    @Test func execFrameLayout() throws {
        let frame = try #require(AgentFrame.execFrame(arguments: ["echo", "hi"], environment: ["A=1"], workingDirectory: "/tmp", stdin: true))
        let payload = Array(frame.dropFirst(8))
        #expect(Array(frame.prefix(8)) == [1, 0, 0, 0, UInt8(payload.count), 0, 0, 0])
        let expected: [UInt8] = [2, 0, 0, 0, 4, 0, 0, 0] + Array("echo".utf8) + [2, 0, 0, 0] + Array("hi".utf8)
            + [1, 0, 0, 0, 3, 0, 0, 0] + Array("A=1".utf8) + [4, 0, 0, 0] + Array("/tmp".utf8) + [1, 0, 0, 0]
        #expect(payload == expected)
        #expect(AgentFrame.execFrame(arguments: [], environment: [], workingDirectory: "/", stdin: false) == nil)
        #expect(AgentFrame.execFrame(arguments: ["a\u{0}b"], environment: [], workingDirectory: "/", stdin: false) == nil)
        #expect(AgentFrame.execFrame(arguments: [String(repeating: "x", count: 1 << 20)], environment: [], workingDirectory: "/", stdin: false) == nil)
    }

    @Test func readerSplitsFramesAcrossReads() throws {
        var stream: [UInt8] = []
        AgentFrame.appendHeader(AgentFrame.stdout, length: 3, to: &stream)
        stream += [7, 8, 9]
        AgentFrame.appendHeader(AgentFrame.exit, length: 8, to: &stream)
        AgentFrame.appendU32(0, to: &stream)
        AgentFrame.appendU32(42, to: &stream)
        var reader = AgentFrameReader()
        var frames: [(UInt32, [UInt8])] = []
        for byte in stream { // one byte at a time: the worst split
            [byte].withUnsafeBytes { reader.append($0) }
            while let frame = try reader.next() { frames.append((frame.type, Array(frame.payload))) }
        }
        #expect(frames.count == 2)
        #expect(frames[0].0 == AgentFrame.stdout && frames[0].1 == [7, 8, 9])
        #expect(frames[1].0 == AgentFrame.exit && AgentFrame.u32(ArraySlice(frames[1].1), at: 4) == 42)
    }

    @Test func oversizeFramesAreRefusedBeforeTheyArrive() {
        var stream: [UInt8] = []
        AgentFrame.appendHeader(AgentFrame.stdout, length: 0xffff_fff0, to: &stream)
        var reader = AgentFrameReader()
        stream.withUnsafeBytes { reader.append($0) }
        #expect(throws: AgentFrameReader.Failure.oversizeFrame(0xffff_fff0)) { _ = try reader.next() }
    }

    @Test func terminationStatus() {
        #expect(ExecTermination.exited(3).shellStatus == 3)
        #expect(ExecTermination.signaled(9, timedOut: false).shellStatus == 137)
    }
}
