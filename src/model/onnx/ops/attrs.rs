//! A node's attributes, read by name; every attribute a node carries must
//! be read by the op's compiler, or the node is refused ([`Attrs::finish`]).

use super::super::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// The attributes of one node, with the set of names the compiler read.
pub(crate) struct Attrs<'a> {
    list: &'a [AttributeProto],
    used: RefCell<BTreeSet<&'a str>>,
}

/// Why a node cannot be compiled: said after "node 'N' (Op) in FILE: ".
pub(crate) type Refusal = String;

impl<'a> Attrs<'a> {
    pub fn of(node: &'a NodeProto) -> Self {
        Attrs {
            list: &node.attribute,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        let a = self.list.iter().find(|a| a.name() == name)?;
        self.used.borrow_mut().insert(a.name());
        Some(a)
    }

    /// Marks `name` as read without using it (attributes whose value does
    /// not matter for inference).
    pub fn ignore(&self, name: &str) {
        let _ = self.get(name);
    }

    pub fn has(&self, name: &str) -> bool {
        self.list.iter().any(|a| a.name() == name)
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, Refusal> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.r#type() == AttributeType::Int || a.i.is_some() => Ok(a.i()),
            Some(_) => Err(format!("attribute '{name}' is not an integer")),
        }
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32, Refusal> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.r#type() == AttributeType::Float || a.f.is_some() => Ok(a.f()),
            Some(_) => Err(format!("attribute '{name}' is not a float")),
        }
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, Refusal> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type() == AttributeType::Ints || !a.ints.is_empty() => {
                Ok(Some(a.ints.clone()))
            }
            Some(_) => Err(format!("attribute '{name}' is not a list of integers")),
        }
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, Refusal> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type() == AttributeType::Floats || !a.floats.is_empty() => {
                Ok(Some(a.floats.clone()))
            }
            Some(_) => Err(format!("attribute '{name}' is not a list of floats")),
        }
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String, Refusal> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(a) if a.s.is_some() => Ok(String::from_utf8_lossy(a.s()).into_owned()),
            Some(_) => Err(format!("attribute '{name}' is not a string")),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&'a super::super::proto::TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    /// A string attribute that must be one of `allowed` (the first is the
    /// default).
    pub fn choice(&self, name: &str, allowed: &[&str]) -> Result<String, Refusal> {
        let v = self.string(name, allowed[0])?;
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(format!("{name} '{v}' is not supported"))
        }
    }

    /// An integer attribute that must have the value `want` (or be absent).
    pub fn require(&self, name: &str, want: i64) -> Result<(), Refusal> {
        let v = self.int(name, want)?;
        if v == want {
            Ok(())
        } else {
            Err(format!("{name} = {v} is not supported"))
        }
    }

    /// Refuses the node if it carries an attribute the compiler did not read.
    pub fn finish(self) -> Result<(), Refusal> {
        let used = self.used.borrow();
        match self.list.iter().find(|a| !used.contains(a.name())) {
            Some(a) => Err(format!("attribute '{}' is not supported", a.name())),
            None => Ok(()),
        }
    }
}
