//! Load-time rewrites of an ONNX graph for ONNX Runtime: forms that exporters write out op by op and
//! ONNX Runtime's own fusions miss, replaced by one operator that computes the same thing.
//!
//! - **tanh GELU** `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, as jax2tf and tf2onnx write it (a
//!   dozen element-wise nodes in an operand order ONNX Runtime's `FastGeluFusion` does not match),
//!   becomes ONNX Runtime's `com.microsoft.FastGelu`.
//! - **one-hot times a matrix** `MatMul(Cast(Equal(x, [0..K))), W)`, an embedding written as a dense
//!   product, becomes a row lookup: `Gather` of `W` with one zero row appended, indexed by `x`
//!   clipped to `-1..=K`, so that values out of `0..K` (a one-hot row of zeros) pick the zero row.
//!
//! A rewrite is made only when it cannot change an answer beyond float rounding: every constant is
//! checked, every node it removes feeds only the rewritten chain (not another node, a graph output
//! or a nested graph), and shapes that matter (ranks, a trailing axis of 1) are those tract's shape
//! inference finds in the original graph alike with a batch of 1, 2 and 3, from declared input
//! shapes. A model with fields that tract's ONNX schema lacks (and so would not survive decoding and
//! encoding again, such as metadata on nodes), with tensors in external files, or with nodes out of
//! topological order is left as it is; so is one ONNX Runtime refuses once rewritten.

use std::collections::{HashMap, HashSet};

use prost::Message;
use tract_onnx::pb::{self, tensor_proto::DataType as Dt, AttributeProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

/// What was rewritten in a model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewrites {
    /// tanh GELU chains now one `com.microsoft.FastGelu` each.
    pub fast_gelu: usize,
    /// one-hot products now one row lookup each.
    pub one_hot_gather: usize,
}

impl Rewrites {
    pub fn any(&self) -> bool {
        self.fast_gelu + self.one_hot_gather > 0
    }
}

impl std::fmt::Display for Rewrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tanh GELU chain(s) as FastGelu, {} one-hot product(s) as a row lookup",
            self.fast_gelu, self.one_hot_gather
        )
    }
}

/// Why a model was not looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRewritten {
    /// The bytes are not an ONNX model at all.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// An ONNX model that keeps tensors in files beside it, left as it is.
    #[error("it keeps tensors in external files")]
    ExternalData,
    /// An ONNX model this module leaves as it is, and why.
    #[error("{0}")]
    Kept(String),
}

/// The model `bytes` rewritten, with what was rewritten; `Ok(None)` when nothing applies. `Err`
/// says why the model was not looked at (it is then served as it is).
pub fn rewrite(bytes: &[u8]) -> Result<Option<(Vec<u8>, Rewrites)>, NotRewritten> {
    let mut model = ModelProto::decode(bytes).map_err(|e| NotRewritten::NotOnnx(e.to_string()))?;
    // Decoding drops what tract's schema lacks; encoding again would lose it.
    if let Some(field) = unknown_field(bytes, Kind::Model) {
        return Err(NotRewritten::Kept(format!(
            "it has {field}, which this ONNX schema does not keep"
        )));
    }
    let Some(graph) = model.graph.as_ref() else {
        return Ok(None);
    };
    if external(graph) {
        return Err(NotRewritten::ExternalData);
    }
    if !sorted(graph) {
        return Err(NotRewritten::Kept("its nodes are not in topological order".into()));
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let facts = Facts::of(&model);
    let mut graph = model.graph.take().expect("checked above");
    let mut taken = names(&graph);
    let mut done = Rewrites::default();
    while let Some(gelu) = Graph::new(&graph).find_gelu(&facts) {
        gelu.apply(&mut graph, &mut taken);
        done.fast_gelu += 1;
    }
    // Clip takes integers from opset 12.
    if opset >= 12 {
        while let Some(lookup) = Graph::new(&graph).find_one_hot(&facts, opset) {
            lookup.apply(&mut graph, &mut taken);
            done.one_hot_gather += 1;
        }
    }
    if !done.any() {
        return Ok(None);
    }
    prune(&mut graph);
    if done.fast_gelu > 0 && !model.opset_import.iter().any(|o| o.domain == "com.microsoft") {
        model.opset_import.push(pb::OperatorSetIdProto {
            domain: "com.microsoft".into(),
            version: 1,
        });
    }
    model.graph = Some(graph);
    Ok(Some((model.encode_to_vec(), done)))
}

/// The graphs nested in a node's attributes (the branches of `If`, the bodies of `Loop` and `Scan`).
fn subgraphs(n: &NodeProto) -> impl Iterator<Item = &pb::GraphProto> {
    n.attribute.iter().flat_map(|a| a.g.iter().chain(a.graphs.iter()))
}

/// Every name the graphs nested in `g`'s nodes read from an outer scope or give as outputs, at any
/// depth (a superset: names they define themselves are included).
fn nested_names(g: &pb::GraphProto) -> HashSet<&str> {
    fn walk<'a>(g: &'a pb::GraphProto, into: &mut HashSet<&'a str>) {
        for n in &g.node {
            into.extend(n.input.iter().map(String::as_str));
            subgraphs(n).for_each(|sub| walk(sub, into));
        }
        into.extend(g.output.iter().map(|o| o.name.as_str()));
    }
    let mut names = HashSet::new();
    for n in &g.node {
        subgraphs(n).for_each(|sub| walk(sub, &mut names));
    }
    names
}

/// Every node and tensor name in `g` and the graphs nested in it.
fn names(g: &pb::GraphProto) -> HashSet<String> {
    let mut all = HashSet::new();
    fn walk(g: &pb::GraphProto, all: &mut HashSet<String>) {
        all.extend(
            g.input
                .iter()
                .chain(&g.output)
                .chain(&g.value_info)
                .map(|v| v.name.clone()),
        );
        all.extend(g.initializer.iter().map(|t| t.name.clone()));
        for n in &g.node {
            all.insert(n.name.clone());
            all.extend(n.input.iter().chain(&n.output).cloned());
            subgraphs(n).for_each(|sub| walk(sub, all));
        }
    }
    walk(g, &mut all);
    all
}

/// `base`, or `base` with a number after it, unused in the graph; now taken.
fn fresh(taken: &mut HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut k = 2;
    while taken.contains(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    taken.insert(name.clone());
    name
}

/// Whether any tensor of `g`, nested graphs included, keeps its data in an external file.
fn external(g: &pb::GraphProto) -> bool {
    let outside = |t: &TensorProto| {
        t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) || !t.external_data.is_empty()
    };
    let sparse = |s: &pb::SparseTensorProto| s.values.iter().chain(s.indices.iter()).any(outside);
    g.initializer.iter().any(outside)
        || g.sparse_initializer.iter().any(sparse)
        || g.node.iter().any(|n| {
            n.attribute.iter().any(|a| {
                a.t.iter().chain(&a.tensors).any(outside) || a.sparse_tensor.iter().chain(&a.sparse_tensors).any(sparse)
            }) || subgraphs(n).any(external)
        })
}

/// Whether every node of `g` reads only graph inputs, initializers and outputs of nodes before it.
fn sorted(g: &pb::GraphProto) -> bool {
    let mut defined: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
    defined.extend(
        g.sparse_initializer
            .iter()
            .filter_map(|s| s.values.as_ref())
            .map(|t| t.name.as_str()),
    );
    for n in &g.node {
        if !n.input.iter().all(|i| i.is_empty() || defined.contains(i.as_str())) {
            return false;
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    true
}

/// Ranks and trailing axes of the original graph's tensors, as tract's shape inference finds them.
struct Facts(HashMap<String, (usize, Option<TDim>)>);

impl Facts {
    /// Facts that hold with a batch of 1, 2 and 3 alike (a symbolic batch is beyond tract for graphs
    /// that compute shapes from the input's, such as magika's; ranks and trailing axes that do not
    /// depend on the batch agree between them). None when an input declares no shape.
    fn of(model: &ModelProto) -> Facts {
        let none = Facts(HashMap::new());
        let declared = |i: &pb::ValueInfoProto| match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t.shape.is_some(),
            _ => false,
        };
        if !model.graph.as_ref().is_some_and(|g| g.input.iter().all(declared)) {
            return none;
        }
        let model = &skeleton(model);
        // A model tract trips over must not take the server down with it.
        let facts = std::panic::catch_unwind(|| [1, 2, 3].map(|batch| Self::at(model, batch)));
        let Ok([Some(one), Some(two), Some(three)]) = facts else {
            return none;
        };
        Facts(
            one.into_iter()
                .filter(|(name, fact)| two.get(name) == Some(fact) && three.get(name) == Some(fact))
                .collect(),
        )
    }

    fn at(model: &ModelProto, batch: usize) -> Option<HashMap<String, (usize, Option<TDim>)>> {
        // As the tract engine loads a model: inputs with an open first axis get the batch.
        let typed = tract_onnx::onnx()
            .parse(model, None)
            .and_then(|p| crate::model::with_batch(p.model, Some(batch)))
            .and_then(|m| m.into_typed());
        let typed = match typed {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(
                    "ONNX rewrites: tract cannot infer the model's shapes ({e}); only rank-free rewrites apply"
                );
                return None;
            }
        };
        let mut facts = HashMap::new();
        for node in &typed.nodes {
            for slot in 0..node.outputs.len() {
                let outlet = OutletId::new(node.id, slot);
                // Graph inputs are unlabelled sources named after the input.
                let source = typed.input_outlets().is_ok_and(|i| i.contains(&outlet));
                let label = typed.outlet_label(outlet).or(source.then_some(node.name.as_str()));
                if let (Some(label), Ok(fact)) = (label, typed.outlet_fact(outlet)) {
                    facts.insert(label.to_string(), (fact.rank(), fact.shape.last().cloned()));
                }
            }
        }
        Some(facts)
    }

    fn rank(&self, t: &str) -> Option<usize> {
        self.0.get(t).map(|f| f.0)
    }

    fn last_dim_is_one(&self, t: &str) -> bool {
        self.0.get(t).and_then(|f| f.1.as_ref()) == Some(&1.to_dim())
    }
}

/// Initializers with more elements than this are weights, not shapes: shape inference gets them as
/// inputs of the same type and shape, so that it neither copies nor reads their values.
const WEIGHT_ELEMENTS: usize = 4096;

/// `model` without its weights' values, for shape inference (see [`WEIGHT_ELEMENTS`]).
fn skeleton(model: &ModelProto) -> ModelProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    use pb::{type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
    let Some(g) = model.graph.as_ref() else {
        return model.clone();
    };
    let mut graph = pb::GraphProto {
        node: g.node.clone(),
        name: g.name.clone(),
        input: g.input.clone(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        ..Default::default()
    };
    let inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    for t in &g.initializer {
        if elements(&t.dims).is_some_and(|n| n <= WEIGHT_ELEMENTS) {
            graph.initializer.push(t.clone());
        } else if !inputs.contains(t.name.as_str()) {
            let dim = t
                .dims
                .iter()
                .map(|d| Dimension {
                    denotation: String::new(),
                    value: Some(Dim::DimValue(*d)),
                })
                .collect();
            graph.input.push(ValueInfoProto {
                name: t.name.clone(),
                r#type: Some(TypeProto {
                    denotation: String::new(),
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: t.data_type,
                        shape: Some(TensorShapeProto { dim }),
                    })),
                }),
                doc_string: String::new(),
            });
        }
    }
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// The number of elements of a tensor of `dims`, if that is a number.
fn elements(dims: &[i64]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, d| n.checked_mul(usize::try_from(*d).ok()?))
}

/// Who makes and who reads each tensor of a graph.
struct Graph<'a> {
    g: &'a pb::GraphProto,
    producer: HashMap<&'a str, usize>,
    readers: HashMap<&'a str, Vec<usize>>,
    /// Graph outputs, and names the nested graphs use.
    outputs: HashSet<&'a str>,
    constants: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    fn new(g: &'a pb::GraphProto) -> Graph<'a> {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut constants: HashMap<&str, &TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        // Graph inputs shadow initializers of the same name (the caller may override them).
        for i in &g.input {
            constants.remove(i.name.as_str());
        }
        for (k, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), k);
            }
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                readers.entry(i.as_str()).or_default().push(k);
            }
            if n.op_type == "Constant" && n.domain.is_empty() && n.output.len() == 1 {
                if let Some(t) = n
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                {
                    constants.insert(n.output[0].as_str(), t);
                }
            }
        }
        // Nested graphs (If, Loop, Scan) may read any outer tensor by name: never private.
        let mut outputs = nested_names(g);
        outputs.extend(g.output.iter().map(|o| o.name.as_str()));
        Graph {
            g,
            producer,
            readers,
            outputs,
            constants,
        }
    }

    /// The node making `t` if it is an `op` of the default domain with that one output.
    fn made_by(&self, t: &str, op: &str) -> Option<usize> {
        let k = *self.producer.get(t)?;
        let n = &self.g.node[k];
        (n.op_type == op && n.domain.is_empty() && n.output.len() == 1).then_some(k)
    }

    /// `t` is read once, by the chain being matched, and is neither a graph output nor used by a
    /// nested graph.
    fn private(&self, t: &str) -> bool {
        self.readers.get(t).is_some_and(|r| r.len() == 1) && !self.outputs.contains(t)
    }

    /// A one-element float32 constant: its value and rank.
    fn scalar(&self, t: &str) -> Option<(f64, usize)> {
        let c = self.constants.get(t)?;
        if c.data_type != Dt::Float as i32 || elements(&c.dims) != Some(1) {
            return None;
        }
        let v = floats(c)?;
        Some((*v.first()? as f64, c.dims.len()))
    }

    /// The factors of a product of `Mul` nodes rooted at `t` (`t` itself may be made by another
    /// op): powers of `x`, the product of scalar constants, and any other factors. Inner products
    /// must be private to the tree; their nodes are collected in `nodes`.
    fn factors(&self, t: &'a str, x: &str, root: bool, p: &mut Product<'a>) -> bool {
        if t == x {
            p.power += 1;
            return true;
        }
        if let Some((v, rank)) = self.scalar(t) {
            p.coefficient *= v;
            p.rank = p.rank.max(rank);
            return true;
        }
        match self.made_by(t, "Mul") {
            Some(k) if root || self.private(t) => {
                p.nodes.push(k);
                let n = &self.g.node[k];
                n.input.len() == 2 && n.input.iter().all(|i| self.factors(i, x, false, p))
            }
            _ => {
                p.other.push(t);
                true
            }
        }
    }

    fn product(&self, t: &'a str, x: &str) -> Option<Product<'a>> {
        let mut p = Product {
            power: 0,
            coefficient: 1.0,
            rank: 0,
            nodes: vec![],
            other: vec![],
        };
        self.factors(t, x, true, &mut p).then_some(p)
    }

    /// The only node reading `t`, if `t` is private.
    fn reader(&self, t: &str) -> Option<usize> {
        self.private(t).then(|| self.readers[t][0])
    }

    fn find_gelu(&self, facts: &Facts) -> Option<Gelu> {
        (0..self.g.node.len()).find_map(|k| self.gelu_at(k, facts))
    }

    /// A tanh GELU chain around the `Tanh` node `k`.
    fn gelu_at(&self, k: usize, facts: &Facts) -> Option<Gelu> {
        let tanh = &self.g.node[k];
        if tanh.op_type != "Tanh" || !tanh.domain.is_empty() || tanh.input.len() != 1 {
            return None;
        }
        let mut nodes = vec![k];
        let mut rank = 0;
        // The argument: √(2/π) · (x + 0.044715·x³).
        let arg = tanh.input[0].as_str();
        if !self.private(arg) {
            return None;
        }
        let scaled = self.product(arg, "")?;
        let [sum] = scaled.other[..] else { return None };
        if scaled.power != 0 || !near(scaled.coefficient, (2.0 / std::f64::consts::PI).sqrt()) || !self.private(sum) {
            return None;
        }
        let add = self.made_by(sum, "Add")?;
        let (a, b) = (
            self.g.node[add].input.first()?.as_str(),
            self.g.node[add].input.get(1)?.as_str(),
        );
        let (x, cube) = [(a, b), (b, a)].into_iter().find_map(|(x, c)| {
            let cube = self.product(c, x)?;
            (self.private(c) && cube.power == 3 && cube.other.is_empty() && near(cube.coefficient, 0.044715))
                .then_some((x, cube))
        })?;
        rank = rank.max(scaled.rank).max(cube.rank);
        nodes.extend(scaled.nodes);
        nodes.push(add);
        nodes.extend(cube.nodes);
        // 1 + tanh(..)
        let t = tanh.output.first()?.as_str();
        let one_plus = self.reader(t)?;
        let n = &self.g.node[one_plus];
        if n.op_type != "Add" || !n.domain.is_empty() || n.input.len() != 2 {
            return None;
        }
        let one = n.input.iter().find(|i| *i != t)?;
        let (v, r) = self.scalar(one)?;
        if !near(v, 1.0) {
            return None;
        }
        rank = rank.max(r);
        nodes.push(one_plus);
        let p = n.output.first()?.as_str();
        // The product 0.5 · x · (1 + tanh(..)), found by climbing the Mul nodes above it.
        let mut top = p;
        let root = loop {
            let k = self.reader(top)?;
            let n = &self.g.node[k];
            if n.op_type != "Mul" || !n.domain.is_empty() {
                return None;
            }
            top = n.output.first()?.as_str();
            let product = self.product(top, x)?;
            if product.power == 1 && product.other == [p] && near(product.coefficient, 0.5) {
                break product;
            }
            if product.power > 1 || product.other.len() > 1 {
                return None;
            }
        };
        rank = rank.max(root.rank);
        nodes.extend(root.nodes.iter().copied());
        // Constants of a higher rank than x would have broadcast the result to that rank.
        if rank > 0 && facts.rank(x).is_none_or(|r| r < rank) {
            return None;
        }
        let last = *root.nodes.first()?;
        Some(Gelu {
            x: x.to_string(),
            out: top.to_string(),
            name: self.g.node[last].name.clone(),
            at: last,
            nodes,
        })
    }

    fn find_one_hot(&self, facts: &Facts, opset: i64) -> Option<Lookup> {
        (0..self.g.node.len()).find_map(|k| self.one_hot_at(k, facts, opset))
    }

    /// `MatMul(Cast<float>(Equal(x, [0..K))), W)` at the `MatMul` node `k`.
    fn one_hot_at(&self, k: usize, facts: &Facts, opset: i64) -> Option<Lookup> {
        let mm = &self.g.node[k];
        if mm.op_type != "MatMul" || !mm.domain.is_empty() || mm.input.len() != 2 {
            return None;
        }
        let w = self.constants.get(mm.input[1].as_str())?;
        let cast_out = mm.input[0].as_str();
        let cast = self.made_by(cast_out, "Cast").filter(|_| self.private(cast_out))?;
        let to = self.g.node[cast].attribute.iter().find(|a| a.name == "to")?.i;
        if to != Dt::Float as i64 || w.data_type != Dt::Float as i32 || w.dims.len() != 2 {
            return None;
        }
        let eq_out = self.g.node[cast].input.first()?.as_str();
        let equal = self.made_by(eq_out, "Equal").filter(|_| self.private(eq_out))?;
        let ins = &self.g.node[equal].input;
        let (x, range) = [(0, 1), (1, 0)]
            .into_iter()
            .find_map(|(a, b)| Some((ins.get(a)?.as_str(), self.constants.get(ins.get(b)?.as_str())?)))?;
        // The range: shape [1, .., 1, K] holding 0, 1, .., K-1, integer like x.
        let kk = *range.dims.last()?;
        let ints = integers(range)?;
        if kk != w.dims[0]
            || range.dims[..range.dims.len() - 1].iter().any(|d| *d != 1)
            || ints.iter().enumerate().any(|(i, v)| *v != i as i64)
            || ints.len() as i64 != kk
        {
            return None;
        }
        let rank = facts.rank(x)?;
        if rank < range.dims.len() || !facts.last_dim_is_one(x) {
            return None;
        }
        let table = floats(w)?;
        // 0 · inf is NaN in the product but would not be in a lookup.
        if table.iter().any(|v| !v.is_finite()) {
            return None;
        }
        Some(Lookup {
            x: x.to_string(),
            dtype: range.data_type,
            rows: kk,
            width: w.dims[1],
            table,
            out: mm.output.first()?.clone(),
            name: mm.name.clone(),
            opset,
            at: k,
            nodes: vec![k, cast, equal],
        })
    }
}

struct Product<'a> {
    power: u32,
    coefficient: f64,
    /// The highest rank among the constants.
    rank: usize,
    nodes: Vec<usize>,
    other: Vec<&'a str>,
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// The value of a constant, decoded by tract (models with external data are left alone before).
fn value(t: &TensorProto) -> Option<Tensor> {
    tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::FopenDataResolver, t, None).ok()
}

/// The values of a float32 tensor.
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    (t.data_type == Dt::Float as i32).then_some(())?;
    Some(value(t)?.to_plain_array_view::<f32>().ok()?.iter().copied().collect())
}

/// The values of an int32 or int64 tensor.
fn integers(t: &TensorProto) -> Option<Vec<i64>> {
    [Dt::Int32 as i32, Dt::Int64 as i32]
        .contains(&t.data_type)
        .then_some(())?;
    Some(
        value(t)?
            .cast_to::<i64>()
            .ok()?
            .to_plain_array_view::<i64>()
            .ok()?
            .iter()
            .copied()
            .collect(),
    )
}

struct Gelu {
    x: String,
    out: String,
    name: String,
    /// The chain's last node, where the new one goes.
    at: usize,
    nodes: Vec<usize>,
}

impl Gelu {
    fn apply(self, g: &mut pb::GraphProto, taken: &mut HashSet<String>) {
        let base = if self.name.is_empty() { &self.out } else { &self.name };
        let node = NodeProto {
            input: vec![self.x],
            output: vec![self.out.clone()],
            name: fresh(taken, &format!("{base}/revisor_fast_gelu")),
            op_type: "FastGelu".into(),
            domain: "com.microsoft".into(),
            ..Default::default()
        };
        replace(g, self.at, &self.nodes, vec![node]);
    }
}

struct Lookup {
    x: String,
    dtype: i32,
    rows: i64,
    width: i64,
    table: Vec<f32>,
    out: String,
    name: String,
    opset: i64,
    at: usize,
    nodes: Vec<usize>,
}

impl Lookup {
    /// `Squeeze(Gather([W; 0], Clip(x, -1, K)), -2)`: in-range values pick their row; the others
    /// are clipped to -1 or K, both the zero row (Gather counts -1 from the end); the squeeze drops
    /// x's trailing axis of 1, which the lookup leaves second to last.
    fn apply(self, g: &mut pb::GraphProto, taken: &mut HashSet<String>) {
        let p = format!(
            "{}/revisor_lookup",
            if self.name.is_empty() { &self.out } else { &self.name }
        );
        let mut name = |s: &str| fresh(taken, &format!("{p}/{s}"));
        let (table_name, below, above, row, rows_of_x) = (
            name("table"),
            name("below"),
            name("above"),
            name("row"),
            name("rows_of_x"),
        );
        let (clip_name, gather_name, squeeze_name, axis_name) =
            (name("clip"), name("gather"), name("squeeze"), name("axis"));
        let int = |n: &str, v: i64| TensorProto {
            name: n.to_string(),
            data_type: self.dtype,
            raw_data: if self.dtype == Dt::Int32 as i32 {
                (v as i32).to_le_bytes().to_vec()
            } else {
                v.to_le_bytes().to_vec()
            },
            ..Default::default()
        };
        let mut table = self.table;
        table.extend(std::iter::repeat_n(0.0, self.width as usize));
        let mut consts = vec![
            TensorProto {
                name: table_name.clone(),
                dims: vec![self.rows + 1, self.width],
                data_type: Dt::Float as i32,
                raw_data: table.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            },
            int(&below, -1),
            int(&above, self.rows),
        ];
        let node = |op: &str, inputs: &[&str], out: &str, name: String| NodeProto {
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![out.to_string()],
            name,
            op_type: op.into(),
            ..Default::default()
        };
        let mut gather = node("Gather", &[&table_name, &row], &rows_of_x, gather_name);
        gather.attribute.push(AttributeProto {
            name: "axis".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: 0,
            ..Default::default()
        });
        let mut squeeze = node("Squeeze", &[&rows_of_x], &self.out, squeeze_name);
        if self.opset >= 13 {
            consts.push(TensorProto {
                name: axis_name.clone(),
                dims: vec![1],
                data_type: Dt::Int64 as i32,
                int64_data: vec![-2],
                ..Default::default()
            });
            squeeze.input.push(axis_name);
        } else {
            squeeze.attribute.push(AttributeProto {
                name: "axes".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: vec![-2],
                ..Default::default()
            });
        }
        let clip = node("Clip", &[&self.x, &below, &above], &row, clip_name);
        g.initializer.extend(consts);
        replace(g, self.at, &self.nodes, vec![clip, gather, squeeze]);
    }
}

/// Puts `new` where node `at` was and removes `old` (which holds `at`).
fn replace(g: &mut pb::GraphProto, at: usize, old: &[usize], new: Vec<NodeProto>) {
    let nodes = std::mem::take(&mut g.node);
    for (k, n) in nodes.into_iter().enumerate() {
        if k == at {
            g.node.extend(new.iter().cloned());
        } else if !old.contains(&k) {
            g.node.push(n);
        }
    }
}

/// Drops initializers and `Constant` nodes nothing reads any more (nested graphs included).
fn prune(g: &mut pb::GraphProto) {
    let mut read: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .chain(g.output.iter().map(|o| &o.name))
        .cloned()
        .collect();
    read.extend(nested_names(g).into_iter().map(String::from));
    let inputs: HashSet<&String> = g.input.iter().map(|i| &i.name).collect();
    g.initializer
        .retain(|t| read.contains(&t.name) || inputs.contains(&t.name));
    g.node
        .retain(|n| n.op_type != "Constant" || n.output.iter().any(|o| read.contains(o)));
}

/// The ONNX messages whose fields [`unknown_field`] checks.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    ValueInfo,
    Type,
    Function,
    Sparse,
    Training,
}

impl Kind {
    /// Field numbers of the ONNX schema that tract's copy of it lacks, and the fields holding messages
    /// that may hold such fields in turn.
    fn schema(self) -> (&'static [u64], &'static [(u64, Kind)]) {
        use Kind::*;
        match self {
            Model => (&[26], &[(7, Graph), (20, Training), (25, Function)]),
            Graph => (
                &[16],
                &[
                    (1, Node),
                    (5, Tensor),
                    (11, ValueInfo),
                    (12, ValueInfo),
                    (13, ValueInfo),
                    (15, Sparse),
                ],
            ),
            Node => (&[8, 9, 10], &[(5, Attribute)]),
            Attribute => (
                &[14],
                &[
                    (5, Tensor),
                    (6, Graph),
                    (10, Tensor),
                    (11, Graph),
                    (15, Type),
                    (22, Sparse),
                    (23, Sparse),
                ],
            ),
            Sparse => (&[], &[(1, Tensor), (2, Tensor)]),
            Training => (&[], &[(1, Graph), (2, Graph)]),
            Tensor => (&[16], &[]),
            ValueInfo => (&[4], &[(2, Type)]),
            Type => (&[4, 5, 7, 8, 9], &[]),
            Function => (&[11, 12, 13, 14], &[(7, Node)]),
        }
    }
}

/// The first field of `bytes` (a `kind` message in protobuf's wire format), or of a message nested in
/// it, that tract's ONNX schema lacks; also names bytes that are not well-formed.
fn unknown_field(mut bytes: &[u8], kind: Kind) -> Option<String> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let (unknown, nested) = kind.schema();
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes) else {
            return Some("a malformed field".into());
        };
        let (field, wire) = (key >> 3, key & 7);
        if unknown.contains(&field) {
            return Some(format!("field {field} of a {kind:?}Proto"));
        }
        let len = match wire {
            0 => {
                varint(&mut bytes)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => match varint(&mut bytes) {
                Some(n) if n <= bytes.len() as u64 => n as usize,
                _ => return Some("a malformed field".into()),
            },
            _ => return Some(format!("a group or malformed field ({field}) in a {kind:?}Proto")),
        };
        if len > bytes.len() {
            return Some("a malformed field".into());
        }
        let (value, rest) = bytes.split_at(len);
        if wire == 2 {
            if let Some((_, inner)) = nested.iter().find(|(f, _)| *f == field) {
                if let Some(found) = unknown_field(value, *inner) {
                    return Some(found);
                }
            }
        }
        bytes = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    use pb::{type_proto, GraphProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto};

    /// A graph input or output; `None` dimensions are the batch.
    fn io(name: &str, elem: Dt, dims: &[Option<i64>]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(d.map_or(Dim::DimParam("N".into()), Dim::DimValue)),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                denotation: String::new(),
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(TensorShapeProto { dim }),
                })),
            }),
            doc_string: String::new(),
        }
    }

    fn node(op: &str, ins: &[&str], out: &str) -> NodeProto {
        NodeProto {
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            name: out.into(),
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn float(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: Dt::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn model(
        nodes: Vec<NodeProto>,
        inits: Vec<TensorProto>,
        inputs: Vec<ValueInfoProto>,
        outputs: &[&str],
    ) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: inits,
                input: inputs,
                output: outputs
                    .iter()
                    .map(|o| ValueInfoProto {
                        name: o.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                name: "g".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rewritten(m: &ModelProto) -> (Rewrites, ModelProto) {
        match rewrite(&m.encode_to_vec()).unwrap() {
            Some((bytes, done)) => (done, ModelProto::decode(bytes.as_slice()).unwrap()),
            None => (Rewrites::default(), m.clone()),
        }
    }

    fn ops(m: &ModelProto) -> Vec<String> {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone())
            .collect()
    }

    /// The GELU constants, scalars but for `one`, whose dimensions are `one_dims`.
    fn gelu_constants(cube: f32, one_dims: &[i64]) -> Vec<TensorProto> {
        vec![
            float("c", &[], &[cube]),
            float("k", &[], &[0.797_884_6]),
            float("one", one_dims, &[1.0]),
            float("half", &[], &[0.5]),
        ]
    }

    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in the operand order jax2tf writes.
    fn jax_gelu(cube: f32, x_dims: &[Option<i64>], one_dims: &[i64], outputs: &[&str]) -> ModelProto {
        let nodes = vec![
            node("Mul", &["c", "x"], "m0"),
            node("Mul", &["x", "m0"], "m1"),
            node("Mul", &["x", "m1"], "m2"),
            node("Add", &["x", "m2"], "a"),
            node("Mul", &["k", "a"], "s"),
            node("Tanh", &["s"], "t"),
            node("Add", &["one", "t"], "p"),
            node("Mul", &["half", "p"], "h"),
            node("Mul", &["x", "h"], "y"),
        ];
        model(
            nodes,
            gelu_constants(cube, one_dims),
            vec![io("x", Dt::Float, x_dims)],
            outputs,
        )
    }

    #[test]
    fn a_tanh_gelu_as_jax_writes_it_becomes_fast_gelu() {
        let (done, m) = rewritten(&jax_gelu(0.044715, &[None, Some(8)], &[], &["y"]));
        assert_eq!(
            done,
            Rewrites {
                fast_gelu: 1,
                one_hot_gather: 0
            }
        );
        assert_eq!(ops(&m), ["FastGelu"]);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(
            (g.node[0].input.clone(), g.node[0].output.clone()),
            (vec!["x".into()], vec!["y".into()])
        );
        assert_eq!(g.node[0].domain, "com.microsoft");
        assert!(m.opset_import.iter().any(|o| o.domain == "com.microsoft"));
        assert!(g.initializer.is_empty(), "the chain's constants are pruned");
    }

    #[test]
    fn a_tanh_gelu_in_another_operand_order_becomes_fast_gelu() {
        let nodes = vec![
            node("Mul", &["x", "x"], "sq"),
            node("Mul", &["sq", "x"], "cu"),
            node("Mul", &["cu", "c"], "m"),
            node("Add", &["x", "m"], "a"),
            node("Mul", &["a", "k"], "s"),
            node("Tanh", &["s"], "t"),
            node("Add", &["t", "one"], "p"),
            node("Mul", &["x", "half"], "xh"),
            node("Mul", &["xh", "p"], "y"),
            node("Relu", &["y"], "z"),
        ];
        let m = model(
            nodes,
            gelu_constants(0.044715, &[]),
            vec![io("x", Dt::Float, &[None, Some(8)])],
            &["z"],
        );
        let (done, m) = rewritten(&m);
        assert_eq!(done.fast_gelu, 1);
        assert_eq!(ops(&m), ["FastGelu", "Relu"]);
    }

    #[test]
    fn chains_that_are_not_exactly_gelu_are_left_alone() {
        // Another coefficient.
        assert_eq!(
            rewritten(&jax_gelu(0.05, &[None, Some(8)], &[], &["y"])).0,
            Rewrites::default()
        );
        // A tensor inside the chain is also a graph output.
        assert_eq!(
            rewritten(&jax_gelu(0.044715, &[None, Some(8)], &[], &["y", "t"])).0,
            Rewrites::default()
        );
        // A constant of rank 3 broadcasts x of rank 2 to rank 3: FastGelu would not.
        assert_eq!(
            rewritten(&jax_gelu(0.044715, &[None, Some(8)], &[1, 1, 1], &["y"])).0,
            Rewrites::default()
        );
        // ... but not x of rank 3.
        assert_eq!(
            rewritten(&jax_gelu(0.044715, &[None, Some(4), Some(8)], &[1, 1, 1], &["y"]))
                .0
                .fast_gelu,
            1
        );
    }

    #[test]
    fn ranks_hold_behind_weights_that_shape_inference_gets_as_inputs() {
        // x = input · W with W [64, 100] over WEIGHT_ELEMENTS: the skeleton makes W an input of that
        // shape, and x's rank (3) still allows the rank-3 constant.
        let mut m = jax_gelu(0.044715, &[None, Some(4), Some(64)], &[1, 1, 1], &["y"]);
        let g = m.graph.as_mut().unwrap();
        g.input[0].name = "features".into();
        g.node.insert(0, node("MatMul", &["features", "w"], "x"));
        g.initializer.push(float("w", &[64, 100], &[0.5; 6400]));
        const { assert!(6400 > WEIGHT_ELEMENTS) };
        let skeleton = skeleton(&m);
        let sg = skeleton.graph.as_ref().unwrap();
        assert!(sg.input.iter().any(|i| i.name == "w") && !sg.initializer.iter().any(|t| t.name == "w"));
        let (done, m) = rewritten(&m);
        assert_eq!(done.fast_gelu, 1);
        assert_eq!(ops(&m), ["MatMul", "FastGelu"]);
        assert!(
            m.graph.unwrap().initializer.iter().any(|t| t.name == "w"),
            "the weight stays in the model"
        );
    }

    /// `jax_gelu` on x with its nodes renamed by `prefix` and unnamed, reading `x` and writing `out`.
    fn unnamed_gelu(prefix: &str, x: &str, out: &str) -> Vec<NodeProto> {
        let m = jax_gelu(0.044715, &[], &[], &[]);
        let mut nodes = m.graph.unwrap().node;
        let rename = |t: &str| match t {
            "x" => x.to_string(),
            "y" => out.to_string(),
            "c" | "k" | "one" | "half" => t.to_string(),
            t => format!("{prefix}{t}"),
        };
        for n in &mut nodes {
            n.name.clear();
            n.input = n.input.iter().map(|i| rename(i)).collect();
            n.output = n.output.iter().map(|o| rename(o)).collect();
        }
        nodes
    }

    #[test]
    fn new_nodes_get_names_of_their_own() {
        // Two chains whose nodes have no names, one after the other.
        let mut nodes = unnamed_gelu("a_", "x", "y1");
        nodes.extend(unnamed_gelu("b_", "y1", "y"));
        let m = model(
            nodes,
            gelu_constants(0.044715, &[]),
            vec![io("x", Dt::Float, &[None, Some(8)])],
            &["y"],
        );
        let (done, m) = rewritten(&m);
        assert_eq!(done.fast_gelu, 2);
        let names: Vec<String> = m.graph.unwrap().node.iter().map(|n| n.name.clone()).collect();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1]);
        assert!(names.iter().all(|n| !n.is_empty()));
    }

    /// An `If` node whose branches read `names` (nested one level deeper when `deep`).
    fn branch_reading(names: &[&str], deep: bool) -> NodeProto {
        let body = |inner: Vec<NodeProto>| pb::GraphProto {
            node: inner,
            output: vec![ValueInfoProto {
                name: "branch_out".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let reads = vec![node("Sum", names, "branch_out")];
        let then = if deep {
            let mut inner_if = node("If", &["cond"], "branch_out");
            inner_if.attribute.push(AttributeProto {
                name: "then_branch".into(),
                r#type: pb::attribute_proto::AttributeType::Graph as i32,
                g: Some(body(reads)),
                ..Default::default()
            });
            body(vec![inner_if])
        } else {
            body(reads)
        };
        let mut n = node("If", &["cond"], "z");
        n.attribute.push(AttributeProto {
            name: "then_branch".into(),
            r#type: pb::attribute_proto::AttributeType::Graph as i32,
            g: Some(then),
            ..Default::default()
        });
        n
    }

    #[test]
    fn what_nested_graphs_read_is_neither_removed_nor_pruned() {
        let with_if = |names: &[&str], deep: bool| {
            let mut m = jax_gelu(0.044715, &[None, Some(8)], &[], &["y", "z"]);
            let g = m.graph.as_mut().unwrap();
            g.node.push(branch_reading(names, deep));
            g.input.push(io("cond", Dt::Bool, &[]));
            g.initializer.push(float("bias", &[8], &[0.25; 8]));
            m
        };
        // The Tanh's output, read two graphs down: the chain is not private.
        assert_eq!(rewritten(&with_if(&["t"], true)).0, Rewrites::default());
        // The result and an initializer read only inside a branch: rewritten, the initializer kept.
        let (done, m) = rewritten(&with_if(&["y", "bias"], false));
        assert_eq!(done.fast_gelu, 1);
        assert!(m.graph.unwrap().initializer.iter().any(|t| t.name == "bias"));
    }

    #[test]
    fn a_rank_that_changes_with_a_batch_of_1_is_no_rank() {
        // x = Squeeze(input [N, 1, 8]) squeezes every axis of 1: rank 1 at batch 1, rank 2 at 2 and 3.
        let mut m = jax_gelu(0.044715, &[None, Some(1), Some(8)], &[1, 1], &["y"]);
        let g = m.graph.as_mut().unwrap();
        g.input[0].name = "features".into();
        g.node.insert(0, node("Squeeze", &["features"], "x"));
        assert_eq!(rewritten(&m).0, Rewrites::default());
    }

    #[test]
    fn an_input_without_a_declared_shape_proves_no_rank() {
        // x = Unsqueeze(features, -1) against a range of rank 1, with features INT64 of a declared
        // shape, and of no declared shape (which tract's loader would take for rank 0).
        let declared = |shape: bool| {
            let mut m = one_hot(&[None, Some(6), Some(1)], (0..10).collect(), table(), Dt::Float, 17);
            let g = m.graph.as_mut().unwrap();
            g.initializer[0].dims = vec![10];
            g.input[0] = if shape {
                io("features", Dt::Int64, &[None, Some(6)])
            } else {
                let mut any = io("features", Dt::Int64, &[]);
                if let Some(pb::type_proto::Value::TensorType(t)) = any.r#type.as_mut().unwrap().value.as_mut() {
                    t.shape = None;
                }
                any
            };
            g.initializer.push(TensorProto {
                name: "last".into(),
                dims: vec![1],
                data_type: Dt::Int64 as i32,
                int64_data: vec![-1],
                ..Default::default()
            });
            g.node.insert(0, node("Unsqueeze", &["features", "last"], "x"));
            rewritten(&m).0
        };
        assert_eq!(declared(true).one_hot_gather, 1);
        assert_eq!(declared(false), Rewrites::default());
    }

    #[test]
    fn graphs_out_of_order_or_with_external_data_are_left_as_they_are() {
        // A cycle: p feeds the product that feeds p.
        let mut m = jax_gelu(0.044715, &[None, Some(8)], &[], &["y"]);
        let g = m.graph.as_mut().unwrap();
        g.node[7] = node("Mul", &["y", "p"], "h");
        let why = rewrite(&m.encode_to_vec()).unwrap_err().to_string();
        assert!(why.contains("topological order"), "{why}");
        // A Constant node whose value lives in a file beside the model.
        let mut m = jax_gelu(0.044715, &[None, Some(8)], &[], &["y"]);
        let mut constant = node("Constant", &[], "extra");
        let mut t = float("", &[8], &[]);
        t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        constant.attribute.push(AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(t),
            ..Default::default()
        });
        m.graph.as_mut().unwrap().node.insert(0, constant);
        let why = rewrite(&m.encode_to_vec()).unwrap_err().to_string();
        assert!(why.contains("external files"), "{why}");
    }

    /// `MatMul(Cast<to>(Equal(x, range)), W)` with x INT64 of `x_dims`.
    fn one_hot(x_dims: &[Option<i64>], range: Vec<i64>, table: Vec<f32>, to: Dt, opset: i64) -> ModelProto {
        let k = range.len() as i64;
        let mut cast = node("Cast", &["e"], "c");
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: to as i64,
            ..Default::default()
        });
        let nodes = vec![
            node("Equal", &["x", "range"], "e"),
            cast,
            node("MatMul", &["c", "w"], "y"),
        ];
        let inits = vec![
            TensorProto {
                name: "range".into(),
                dims: vec![1, 1, k],
                data_type: Dt::Int64 as i32,
                int64_data: range,
                ..Default::default()
            },
            float("w", &[k, table.len() as i64 / k], &table),
        ];
        let mut m = model(nodes, inits, vec![io("x", Dt::Int64, x_dims)], &["y"]);
        m.opset_import[0].version = opset;
        m
    }

    fn table() -> Vec<f32> {
        (0..40).map(|i| i as f32 * 0.25 - 3.0).collect()
    }

    #[test]
    fn a_one_hot_product_becomes_a_lookup_with_a_zero_row_for_values_out_of_range() {
        let (done, m) = rewritten(&one_hot(
            &[None, Some(6), Some(1)],
            (0..10).collect(),
            table(),
            Dt::Float,
            17,
        ));
        assert_eq!(
            done,
            Rewrites {
                fast_gelu: 0,
                one_hot_gather: 1
            }
        );
        assert_eq!(ops(&m), ["Clip", "Gather", "Squeeze"]);
        let clip = &m.graph.as_ref().unwrap().node[0];
        let bound = |i: usize| {
            let t = m
                .graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .find(|t| t.name == clip.input[i])
                .unwrap();
            integers(t).unwrap()
        };
        assert_eq!(
            (bound(1), bound(2)),
            (vec![-1], vec![10]),
            "out of range: -1 or K, the zero row"
        );
        let g = m.graph.as_ref().unwrap();
        let squeeze = g.node.last().unwrap();
        assert_eq!(squeeze.output, ["y"]);
        let axis = g.initializer.iter().find(|t| t.name == squeeze.input[1]).unwrap();
        assert_eq!(
            axis.int64_data,
            [-2],
            "x's trailing axis of 1, second to last after the lookup"
        );
        let lookup = g
            .initializer
            .iter()
            .find(|t| t.dims == [11, 4])
            .expect("the table with a zero row");
        let values = floats(lookup).unwrap();
        assert_eq!(&values[..40], &table()[..]);
        assert_eq!(&values[40..], &[0.0; 4]);
        assert!(
            !g.initializer.iter().any(|t| t.name == "w" || t.name == "range"),
            "pruned"
        );
        // Before opset 13 Squeeze takes its axes as an attribute.
        let (_, m) = rewritten(&one_hot(
            &[None, Some(6), Some(1)],
            (0..10).collect(),
            table(),
            Dt::Float,
            12,
        ));
        let squeeze = m.graph.as_ref().unwrap().node.last().unwrap().clone();
        assert_eq!((squeeze.input.len(), squeeze.attribute[0].ints.clone()), (1, vec![-2]));
    }

    #[test]
    fn products_that_are_not_exactly_one_hot_are_left_alone() {
        let (column, wide) = (&[None, Some(6), Some(1)][..], &[None, Some(6), Some(10)][..]);
        let gap: Vec<i64> = (0..10).map(|i| if i == 4 { 11 } else { i }).collect();
        let mut inf = table();
        inf[7] = f32::INFINITY;
        for (why, m) in [
            // Equal then compares element by element.
            (
                "x's trailing axis is not 1",
                one_hot(wide, (0..10).collect(), table(), Dt::Float, 17),
            ),
            ("the range skips a value", one_hot(column, gap, table(), Dt::Float, 17)),
            // 0 · inf is NaN in the product, not in a lookup.
            (
                "the matrix holds inf",
                one_hot(column, (0..10).collect(), inf, Dt::Float, 17),
            ),
            (
                "Clip takes no integers before opset 12",
                one_hot(column, (0..10).collect(), table(), Dt::Float, 11),
            ),
            (
                "the cast is to double",
                one_hot(column, (0..10).collect(), table(), Dt::Double, 17),
            ),
        ] {
            assert_eq!(rewritten(&m).0, Rewrites::default(), "{why}");
        }
    }

    #[test]
    fn fields_tract_does_not_keep_leave_the_model_as_it_is() {
        let m = jax_gelu(0.044715, &[None, Some(8)], &[], &["y"]);
        // ModelProto.configuration (26), empty.
        let mut bytes = m.encode_to_vec();
        bytes.extend([26 << 3 | 2, 0x01, 0x00]);
        let why = rewrite(&bytes).unwrap_err().to_string();
        assert!(why.contains("field 26 of a ModelProto"), "{why}");
        // NodeProto.metadata_props (9), inside the graph's first node.
        let g = m.graph.clone().unwrap();
        let mut node = g.node[0].encode_to_vec();
        node.extend([9 << 3 | 2, 0x00]);
        let mut graph = vec![1 << 3 | 2];
        prost::encoding::encode_varint(node.len() as u64, &mut graph);
        graph.extend(node);
        graph.extend(
            GraphProto {
                node: g.node[1..].to_vec(),
                ..g
            }
            .encode_to_vec(),
        );
        let mut bytes = ModelProto {
            graph: None,
            ..m.clone()
        }
        .encode_to_vec();
        bytes.push(7 << 3 | 2);
        prost::encoding::encode_varint(graph.len() as u64, &mut bytes);
        bytes.extend(graph);
        let why = rewrite(&bytes).unwrap_err().to_string();
        assert!(why.contains("field 9 of a NodeProto"), "{why}");
        // Without the extra field the same bytes are rewritten.
        assert!(rewrite(&m.encode_to_vec()).unwrap().is_some());
    }
}
