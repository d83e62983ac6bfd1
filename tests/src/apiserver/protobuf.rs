//! The one protobuf body the server reads: kubectl's generator commands
//! send built-in kinds as `application/vnd.kubernetes.protobuf`, and of
//! those the workflows here use `kubectl create namespace`. Its
//! `Namespace` (name, generateName, labels, annotations) is decoded into
//! JSON; any other protobuf body is answered `415 Unsupported Media Type`.

use serde_json::{Map, Value, json};

/// The envelope's magic prefix (`k8s\0`).
const MAGIC: &[u8] = b"k8s\0";

/// A field of a protobuf message: its number and, for length-delimited
/// fields, its bytes (other wire types are skipped).
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            2 => {
                let length = usize::try_from(varint(&mut bytes)?).ok()?;
                fields.push((number, bytes.get(..length)?));
                bytes = &bytes[length..];
            }
            5 => bytes = bytes.get(4..)?,
            _ => return None,
        }
    }
    Some(fields)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn text(bytes: &[u8]) -> Option<Value> {
    Some(Value::String(std::str::from_utf8(bytes).ok()?.to_owned()))
}

/// A `map<string, string>` entry.
fn entry(bytes: &[u8]) -> Option<(String, Value)> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (number, field) in fields(bytes)? {
        match number {
            1 => key = std::str::from_utf8(field).ok()?.to_owned(),
            2 => value = text(field)?,
            _ => {}
        }
    }
    Some((key, value))
}

fn object_meta(bytes: &[u8]) -> Option<Value> {
    let mut metadata = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    for (number, field) in fields(bytes)? {
        match number {
            1 => {
                metadata.insert("name".into(), text(field)?);
            }
            2 => {
                metadata.insert("generateName".into(), text(field)?);
            }
            11 => labels.extend(entry(field)),
            12 => annotations.extend(entry(field)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    Some(Value::Object(metadata))
}

/// The JSON of a protobuf-encoded `v1` Namespace, or `None` for anything
/// else (or a malformed body).
pub(crate) fn namespace(body: &[u8]) -> Option<Value> {
    let envelope = fields(body.strip_prefix(MAGIC)?)?;
    let mut type_meta = (Value::Null, Value::Null);
    let mut raw: &[u8] = &[];
    for (number, field) in envelope {
        match number {
            1 => {
                for (n, f) in fields(field)? {
                    match n {
                        1 => type_meta.0 = text(f)?,
                        2 => type_meta.1 = text(f)?,
                        _ => {}
                    }
                }
            }
            2 => raw = field,
            _ => {}
        }
    }
    if type_meta != (json!("v1"), json!("Namespace")) {
        return None;
    }
    let mut metadata = json!({});
    for (number, field) in fields(raw)? {
        if number == 1 {
            metadata = object_meta(field)?;
        }
    }
    Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut encoded = vec![(number << 3) | 2, u8::try_from(bytes.len()).unwrap()];
        encoded.extend_from_slice(bytes);
        encoded
    }

    #[test]
    fn kubectl_create_namespace() {
        // What `kubectl create namespace demo` sends (a label added).
        let label = [field(1, b"team"), field(2, b"a")].concat();
        let meta = [field(1, b"demo"), field(11, &label), vec![0x28, 0x01]].concat();
        let object = [field(1, &meta), field(2, &[]), field(3, &[])].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [
            MAGIC.to_vec(),
            field(1, &type_meta),
            field(2, &object),
            field(4, b""),
        ]
        .concat();
        assert_eq!(
            namespace(&body),
            Some(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "demo", "labels": {"team": "a"}}}))
        );
        let service = [field(1, b"v1"), field(2, b"Service")].concat();
        let body = [MAGIC.to_vec(), field(1, &service), field(2, &[])].concat();
        assert_eq!(namespace(&body), None);
        assert_eq!(namespace(b"k8s\0\x0a\xff"), None, "truncated");
        assert_eq!(namespace(b"{}"), None);
    }
}
