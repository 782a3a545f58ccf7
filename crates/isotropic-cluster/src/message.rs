//! User messages: JSON or MessagePack values, kept encoded until someone
//! asks for a type; and [`Codec`], which of the two a primary speaks.

use std::fmt;

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::MessageError;

/// How a primary's channels encode typed messages, requests and replies
/// (`docs/protocol.md`): JSON (the default, and always on Node's channel) or
/// MessagePack. Bytes messages and control frames are the same in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// One JSON value (UTF-8 text).
    #[default]
    Json,
    /// One MessagePack value; structs are maps keyed by field name.
    MessagePack,
}

impl Codec {
    /// The codec's name on the wire (`json`, `msgpack`): the value of
    /// `ISOTROPIC_CLUSTER_CODEC` and of the hello's `codec` field.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MessagePack => "msgpack",
        }
    }

    /// The codec named `name`, if this library speaks it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Codec::Json),
            "msgpack" => Some(Codec::MessagePack),
            _ => None,
        }
    }
}

/// A message received over a channel: one JSON or MessagePack value,
/// validated on arrival and decoded into a Rust type on demand.
///
/// # Examples
///
/// ```
/// use isotropic_cluster::Message;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Greet { name: String }
///
/// let message = Message::from_json(r#"{"type":"greet","name":"User"}"#)?;
/// assert_eq!(message.type_name(), Some("greet"));
/// assert_eq!(message.decode::<Greet>()?.name, "User");
/// # Ok::<(), isotropic_cluster::MessageError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    body: Bytes,
    type_name: Option<Box<str>>,
    codec: Codec,
}

impl Message {
    /// Validates `json` as one JSON value and wraps it.
    ///
    /// # Errors
    ///
    /// [`MessageError::Json`] when `json` is not exactly one valid JSON value,
    /// or nests arrays and objects more than 127 levels deep (serde_json's limit).
    pub fn from_json(json: impl Into<Bytes>) -> Result<Self, MessageError> {
        let body = json.into();
        let Probe(type_name) =
            serde_json::from_slice(&body).map_err(|e| MessageError::Json(e.to_string()))?;
        Ok(Self {
            body,
            type_name,
            codec: Codec::Json,
        })
    }

    /// Validates `body` as one MessagePack value and wraps it.
    ///
    /// # Errors
    ///
    /// [`MessageError::MessagePack`] when `body` is not exactly one valid
    /// MessagePack value, or nests arrays and maps too deeply.
    pub fn from_msgpack(body: impl Into<Bytes>) -> Result<Self, MessageError> {
        let body = body.into();
        let invalid = |reason: String| MessageError::MessagePack(reason);
        let mut rest = &body[..];
        let Probe(type_name) = Probe::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
            .map_err(|e| invalid(e.to_string()))?;
        if !rest.is_empty() {
            return Err(invalid("trailing bytes after the value".into()));
        }
        Ok(Self {
            body,
            type_name,
            codec: Codec::MessagePack,
        })
    }

    /// Validates `body` as one value of `codec`.
    ///
    /// # Errors
    ///
    /// As [`from_json`](Self::from_json) or [`from_msgpack`](Self::from_msgpack).
    pub fn from_encoded(codec: Codec, body: impl Into<Bytes>) -> Result<Self, MessageError> {
        match codec {
            Codec::Json => Self::from_json(body),
            Codec::MessagePack => Self::from_msgpack(body),
        }
    }

    /// Encodes `value` as a message.
    ///
    /// # Errors
    ///
    /// [`MessageError::Json`] when `value`'s `Serialize` implementation fails.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, MessageError> {
        let json = serde_json::to_vec(value).map_err(|e| MessageError::Json(e.to_string()))?;
        Self::from_json(json)
    }

    /// Encodes `value` as a message of `codec`.
    ///
    /// # Errors
    ///
    /// [`MessageError::Json`] or [`MessageError::MessagePack`] when `value`'s
    /// `Serialize` implementation fails.
    pub fn encode_as<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Self, MessageError> {
        match codec {
            Codec::Json => Self::encode(value),
            Codec::MessagePack => {
                let body = rmp_serde::to_vec_named(value)
                    .map_err(|e| MessageError::MessagePack(e.to_string()))?;
                Self::from_msgpack(body)
            }
        }
    }

    /// The message's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The value of the message's string `type` field, if it is an object with
    /// one (the key used by typed routing).
    pub fn type_name(&self) -> Option<&str> {
        self.type_name.as_deref()
    }

    /// Decodes the message into `T`.
    ///
    /// # Errors
    ///
    /// [`MessageError::Decode`] when the value does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        let decoded = match self.codec {
            Codec::Json => serde_json::from_slice(&self.body).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::from_slice(&self.body).map_err(|e| e.to_string()),
        };
        decoded.map_err(|reason| MessageError::Decode {
            type_name: self.type_name.as_deref().map(Into::into),
            target: std::any::type_name::<T>(),
            reason,
        })
    }

    /// The message as JSON text (what `Display` shows): its bytes for a JSON
    /// message; a MessagePack message converted, its maps' keys in order and
    /// binary strings as arrays of numbers.
    pub fn to_json(&self) -> std::borrow::Cow<'_, str> {
        match self.codec {
            Codec::Json => self.as_json().into(),
            Codec::MessagePack => self
                .decode::<serde_json::Value>()
                .map(|value| value.to_string())
                .unwrap_or_default()
                .into(),
        }
    }

    /// The message as JSON text; `""` for a MessagePack message (see
    /// [`to_json`](Self::to_json)).
    pub fn as_json(&self) -> &str {
        match self.codec {
            // Validated as JSON on construction, and JSON text is UTF-8.
            Codec::Json => std::str::from_utf8(&self.body).unwrap_or_default(),
            Codec::MessagePack => "",
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.body
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.codec {
            Codec::Json => write!(f, "Message({})", self.as_json()),
            Codec::MessagePack => write!(f, "Message(msgpack {})", self.to_json()),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// The `visit_*` methods of a visitor that ignores booleans, numbers and null.
macro_rules! ignore_scalars {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// Validates a JSON value and picks out its top-level string `type` field in one
/// pass, without building the value.
struct Probe(Option<Box<str>>);

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProbeVisitor;
        impl<'de> Visitor<'de> for ProbeVisitor {
            type Value = Probe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
                let mut type_name = None;
                while let Some(IsType(is_type)) = map.next_key()? {
                    if is_type && type_name.is_none() {
                        type_name = map.next_value::<TypeValue>()?.0;
                    } else {
                        map.next_value::<Skip>()?;
                    }
                }
                Ok(Probe(type_name))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Probe, A::Error> {
                Skip.visit_seq(seq).map(|_| Probe(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Probe, E> {
                Ok(Probe(None))
            }
            ignore_scalars!(Probe(None));
        }
        deserializer.deserialize_any(ProbeVisitor)
    }
}

/// Whether a map key is `"type"`.
struct IsType(bool);

impl<'de> Deserialize<'de> for IsType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<IsType, E> {
                Ok(IsType(key == "type"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The value of a `type` field: a string, or anything else (ignored).
struct TypeValue(Option<Box<str>>);

impl<'de> Deserialize<'de> for TypeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = TypeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, value: &str) -> Result<TypeValue, E> {
                Ok(TypeValue((!value.is_empty()).then(|| value.into())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TypeValue, A::Error> {
                Skip.visit_map(map).map(|_| TypeValue(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TypeValue, A::Error> {
                Skip.visit_seq(seq).map(|_| TypeValue(None))
            }
            ignore_scalars!(TypeValue(None));
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Any JSON value, skipped. Unlike `IgnoredAny`, nested values go through
/// `deserialize_any`, so serde_json's nesting limit applies.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<IgnoredAny, Skip>()?.is_some() {}
        Ok(Skip)
    }
    ignore_scalars!(Skip);
}
