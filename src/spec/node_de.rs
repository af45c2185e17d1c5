//! A serde `Deserializer` over the positioned tree, so the typed model is decoded straight from
//! the nodes (no intermediate JSON) while the schema check reads its own JSON copy on the other
//! core. Errors are serde's plain ones; the loader maps failures back to positions.

use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;

use super::node::{Key, Kind, Node};

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.kind {
            Kind::Null => v.visit_unit(),
            Kind::Bool(b) => v.visit_bool(*b),
            Kind::Int(i) => v.visit_i64(*i),
            Kind::Float(f) => v.visit_f64(*f),
            Kind::Str(s) => v.visit_borrowed_str(s),
            Kind::Seq(items) => v.visit_seq(Seq { it: items.iter() }),
            Kind::Map(entries) => v.visit_map(Map {
                it: entries.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.kind {
            Kind::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match &self.kind {
            Kind::Str(s) => {
                let d: StrDeserializer<'_, Error> = s.as_str().into_deserializer();
                d.deserialize_enum(name, variants, v)
            }
            _ => Err(de::Error::invalid_type(unexpected(self), &"a string")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

fn unexpected(n: &Node) -> de::Unexpected<'_> {
    match &n.kind {
        Kind::Null => de::Unexpected::Unit,
        Kind::Bool(b) => de::Unexpected::Bool(*b),
        Kind::Int(i) => de::Unexpected::Signed(*i),
        Kind::Float(f) => de::Unexpected::Float(*f),
        Kind::Str(s) => de::Unexpected::Str(s),
        Kind::Seq(_) => de::Unexpected::Seq,
        Kind::Map(_) => de::Unexpected::Map,
    }
}

struct Seq<'a> {
    it: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.it.next() {
            Some(n) => seed.deserialize(n).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.it.len())
    }
}

struct Map<'a> {
    it: std::slice::Iter<'a, (Key, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.it.next() {
            Some((k, v)) => {
                self.value = Some(v);
                let d: StrDeserializer<'_, Error> = k.name.as_str().into_deserializer();
                seed.deserialize(d).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(v),
            None => Err(de::Error::custom("value requested before key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.it.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde::Deserialize;

    use super::super::model::Service;
    use super::super::node::parse;

    #[test]
    fn decodes_like_json() {
        let text = "image: x\nports: ['80:80', {target: 81}]\nenvironment: [A=1]\nrestart: no\ndepends_on: {db: {condition: service_healthy}}\ncpus: '0.5'\nx-e: {a: [1, 2]}\n";
        let n = parse(&Arc::from("t"), text).unwrap().unwrap();
        let from_node = Service::deserialize(&n).unwrap();
        let from_json: Service = serde_json::from_value(n.to_json()).unwrap();
        assert_eq!(from_node, from_json);
        assert_eq!(from_node.ports.len(), 2);
    }
}
