import FoundationEssentials

/// A JSON object type whose decoding refuses fields it does not know, as Firecracker's (serde's
/// `deny_unknown_fields`) does: a misspelt field is an error that names it, never silently ignored.
public protocol StrictObject: Decodable {
    static var fields: Set<String> { get }
}

/// Any key of a JSON object, to list the ones a body has.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Why a request body was refused: Firecracker's `fault_message`.
public struct APIFault: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The largest request body the API reads (Firecracker's default `--http-api-max-payload-size` is 51200 bytes).
public let maximumRequestBody = 51_200

/// Nested objects deeper than this are refused before decoding (a body of `[[[[…` cannot exhaust the stack).
let maximumNesting = 16

/// Decodes `T` from a request body, or throws an `APIFault` that says what was wrong with it in the words a
/// client can act on: invalid JSON, a field of the wrong type, a required field missing, an unknown field.
func decodeBody<T: StrictObject>(_ type: T.Type, _ body: [UInt8], limit: Int = maximumRequestBody) throws(APIFault) -> T {
    guard !body.isEmpty else { throw APIFault("the request needs a JSON body (\(T.self))") }
    guard body.count <= limit else {
        throw APIFault("the request body is \(body.count) bytes, more than the \(limit) this API reads")
    }
    var depth = 0
    var inString = false
    var escaped = false
    for byte in body {
        if inString {
            if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
            continue
        }
        switch byte {
        case UInt8(ascii: "\""): inString = true
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth += 1
            guard depth <= maximumNesting else { throw APIFault("the request body nests deeper than \(maximumNesting) levels") }
        case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
        default: break
        }
    }
    do {
        return try JSONDecoder().decode(StrictBox<T>.self, from: Data(body)).value
    } catch let fault as APIFault {
        throw fault
    } catch let error as DecodingError {
        throw APIFault(describe(error, T.self))
    } catch {
        throw APIFault("the request body is not valid JSON for \(T.self): \(error)")
    }
}

/// Decodes a `StrictObject`, first checking its keys.
struct StrictBox<T: StrictObject>: Decodable {
    var value: T
    init(from decoder: any Decoder) throws {
        try checkFields(decoder, T.self)
        value = try T(from: decoder)
    }
}

/// Throws when the object at `decoder` has a key `T` does not know.
func checkFields<T: StrictObject>(_ decoder: any Decoder, _ type: T.Type) throws {
    let container: KeyedDecodingContainer<AnyKey>
    do { container = try decoder.container(keyedBy: AnyKey.self) } catch {
        throw APIFault("\(pathText(decoder.codingPath))expected a JSON object (\(T.self))")
    }
    for key in container.allKeys {
        guard T.fields.contains(key.stringValue) else {
            throw APIFault("\(pathText(decoder.codingPath))unknown field `\(key.stringValue)`, expected one of \(T.fields.sorted().map { "`\($0)`" }.joined(separator: ", "))")
        }
        // No field of the specification is nullable: a null is refused, not taken as "left out".
        if (try? container.decodeNil(forKey: key)) == true {
            throw APIFault("\(pathText(decoder.codingPath + [key]))invalid type: null (leave the field out instead)")
        }
    }
}

/// An optional nested strict object (a rate limiter inside a drive, say): decoded with the same check, absent as nil
/// (checkFields refuses a null), and left out of the JSON when nil (the specification has no nullable fields).
@propertyWrapper
public struct StrictOptional<T: StrictObject & Encodable & Equatable & Sendable>: Codable, Equatable, Sendable {
    public var wrappedValue: T?
    public init(wrappedValue: T?) { self.wrappedValue = wrappedValue }
    public init(from decoder: any Decoder) throws {
        if try decoder.singleValueContainer().decodeNil() { wrappedValue = nil; return }
        try checkFields(decoder, T.self)
        wrappedValue = try T(from: decoder)
    }
    public func encode(to encoder: any Encoder) throws { try wrappedValue.encode(to: encoder) }
}

/// An optional array of strict objects (a configuration file's drives).
@propertyWrapper
public struct StrictArray<T: StrictObject & Encodable & Equatable & Sendable>: Codable, Equatable, Sendable {
    public var wrappedValue: [T]?
    public init(wrappedValue: [T]?) { self.wrappedValue = wrappedValue }
    public init(from decoder: any Decoder) throws {
        if try decoder.singleValueContainer().decodeNil() { wrappedValue = nil; return }
        wrappedValue = try [StrictBox<T>](from: decoder).map(\.value)
    }
    public func encode(to encoder: any Encoder) throws { try wrappedValue.encode(to: encoder) }
}

extension KeyedDecodingContainer {
    func decode<T>(_ type: StrictOptional<T>.Type, forKey key: Key) throws -> StrictOptional<T> {
        try decodeIfPresent(type, forKey: key) ?? StrictOptional(wrappedValue: nil)
    }
    func decode<T>(_ type: StrictArray<T>.Type, forKey key: Key) throws -> StrictArray<T> {
        try decodeIfPresent(type, forKey: key) ?? StrictArray(wrappedValue: nil)
    }
}

extension KeyedEncodingContainer {
    mutating func encode<T>(_ value: StrictOptional<T>, forKey key: Key) throws {
        try encodeIfPresent(value.wrappedValue, forKey: key)
    }
    mutating func encode<T>(_ value: StrictArray<T>, forKey key: Key) throws {
        try encodeIfPresent(value.wrappedValue, forKey: key)
    }
}

/// `drives[0].rate_limiter: `, or nothing at the top level.
private func pathText(_ path: [any CodingKey]) -> String {
    guard !path.isEmpty else { return "" }
    var text = ""
    for key in path {
        if let index = key.intValue { text += "[\(index)]" } else { text += (text.isEmpty ? "" : ".") + key.stringValue }
    }
    return text + ": "
}

private func describe<T>(_ error: DecodingError, _ type: T.Type) -> String {
    switch error {
    case .keyNotFound(let key, let context):
        return "\(pathText(context.codingPath))missing field `\(key.stringValue)`" + (context.codingPath.isEmpty ? " (\(T.self))" : "")
    case .typeMismatch(let expected, let context):
        return "\(pathText(context.codingPath))invalid type: expected \(jsonName(expected))"
    case .valueNotFound(let expected, let context):
        return "\(pathText(context.codingPath))invalid type: null, expected \(jsonName(expected))"
    case .dataCorrupted(let context):
        if let fault = context.underlyingError as? APIFault { return fault.message }
        if context.codingPath.isEmpty { return "the request body is not valid JSON: \(context.debugDescription)" }
        return "\(pathText(context.codingPath))\(context.debugDescription)"
    @unknown default:
        return "the request body is not valid for \(T.self)"
    }
}

private func jsonName(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: return "a string"
    case is Bool.Type: return "a boolean"
    case is Int.Type, is Int64.Type, is UInt64.Type, is UInt32.Type, is Int32.Type, is UInt16.Type, is UInt8.Type: return "an integer"
    default: return "\(type)"
    }
}
