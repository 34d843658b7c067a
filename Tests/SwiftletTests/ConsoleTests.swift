import Glibc
@testable import Swiftlet
import Testing

/// A console file stops at its cap: the bytes past it are counted, not written, after one line that says so.
@Suite struct ConsoleTests {
    @Test func aConsoleFileStopsAtItsCap() throws {
        let path = "/tmp/swiftlet-console-test-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        defer { unlink(path) }
        let sink = try ConsoleSink(configuration: .file(path), fileLimit: 10)
        for byte in Array("0123456789abcdefghijklmno".utf8) { sink.write(byte) }
        #expect(sink.statistics == ConsoleStatistics(written: 10, dropped: 15))
        let file = fopen(path, "r")
        defer { fclose(file) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = fread(&buffer, 1, buffer.count, file)
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        #expect(text.hasPrefix("0123456789\n[swiftlet: the console file reached its cap of 10 bytes"))
        #expect(!text.contains("abc") && text.hasSuffix("output is dropped]\n"))
        #expect(text.filter { $0 == "\n" }.count == 2) // the notice is written once
    }

    @Test func stdoutAndNowhereHaveNoCap() throws {
        let none = try ConsoleSink(configuration: .none, fileLimit: 1)
        for _ in 0..<5 { none.write(0x41) }
        #expect(none.statistics == ConsoleStatistics(written: 0, dropped: 0))
        #expect(none.limit == nil)
        #expect(MachineConfiguration(kernelPath: "k").consoleFileMaximumSize == 64 << 20)
    }
}
