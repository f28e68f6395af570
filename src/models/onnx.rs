//! A minimal, write-only ONNX serialiser.
//!
//! ONNX files are protobuf `ModelProto` messages. We only ever *write* a
//! handful of message types for graphs of float tensors, so the wire format is
//! hand-rolled here instead of pulling in protobuf code generation (build
//! script, `protoc`, generated code) for a few dozen lines of encoding.
//!
//! Field numbers follow `onnx/onnx.proto` (checked against onnx 1.23). ONNX is a
//! proto2 schema, so repeated scalars (`dims`, `ints`) are written *unpacked*,
//! one tag per element, which is proto2's own default encoding.
//!
//! Deliberately absent until a model needs them (in a binary crate they would
//! be dead code): float/string/tensor attributes, non-float tensors and
//! external tensor data. Symbolic (`dim_param`) dimensions are there for the
//! named batch dimension of converted pretrained models.
//!
//! Encoding is two-pass: every message can report its exact encoded size, so
//! [`Model::encode`] allocates the output once and writes nested length
//! prefixes without staging sub-messages in temporary buffers. That matters
//! because initializer `raw_data` is nearly the whole file (~17 MB for
//! MobileNet-v1 1.0).

/// Protobuf wire type of varint-encoded scalars (int64, int32, enums).
const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of length-delimited fields (strings, bytes, messages).
const WIRE_LEN: u8 = 2;

/// `TensorProto.DataType.FLOAT`, the only element type this writer emits.
const DATA_TYPE_FLOAT: i64 = 1;
/// `AttributeProto.AttributeType` values.
const ATTR_TYPE_INT: i64 = 2;
const ATTR_TYPE_INTS: i64 = 7;

/// Number of bytes `put_varint` emits for `v`.
fn varint_len(v: u64) -> usize {
    // Seven payload bits per byte; `| 1` makes zero take one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Base-128 varint, least significant group first.
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

fn put_tag(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(buf, u64::from(field) << 3 | u64::from(wire_type));
}

fn int_field_len(field: u32, v: i64) -> usize {
    // Negative int64/int32 values are sign-extended to 64 bits (10 bytes) on
    // the wire; the `as u64` reinterpretation does exactly that.
    tag_len(field) + varint_len(v as u64)
}

fn put_int_field(buf: &mut Vec<u8>, field: u32, v: i64) {
    put_tag(buf, field, WIRE_VARINT);
    put_varint(buf, v as u64);
}

fn len_field_len(field: u32, payload_len: usize) -> usize {
    tag_len(field) + varint_len(payload_len as u64) + payload_len
}

fn put_bytes_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A protobuf message that knows its encoded size up front.
trait Message {
    /// Exact number of bytes `encode_fields` appends.
    fn encoded_len(&self) -> usize;
    /// Appends the message's fields (without an outer tag or length prefix).
    fn encode_fields(&self, buf: &mut Vec<u8>);
}

fn message_field_len(field: u32, msg: &impl Message) -> usize {
    len_field_len(field, msg.encoded_len())
}

fn put_message_field(buf: &mut Vec<u8>, field: u32, msg: &impl Message) {
    put_tag(buf, field, WIRE_LEN);
    put_varint(buf, msg.encoded_len() as u64);
    msg.encode_fields(buf);
}

/// Value of a node attribute (`AttributeProto`).
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

#[derive(Debug)]
struct Attribute {
    name: String,
    value: Attr,
}

impl Message for Attribute {
    fn encoded_len(&self) -> usize {
        let (value_len, attr_type) = match &self.value {
            Attr::Int(i) => (int_field_len(3, *i), ATTR_TYPE_INT),
            Attr::Ints(ints) => (
                ints.iter().map(|&i| int_field_len(8, i)).sum(),
                ATTR_TYPE_INTS,
            ),
        };
        len_field_len(1, self.name.len()) + value_len + int_field_len(20, attr_type)
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        put_bytes_field(buf, 1, self.name.as_bytes());
        let attr_type = match &self.value {
            Attr::Int(i) => {
                put_int_field(buf, 3, *i);
                ATTR_TYPE_INT
            }
            Attr::Ints(ints) => {
                for &i in ints {
                    put_int_field(buf, 8, i);
                }
                ATTR_TYPE_INTS
            }
        };
        put_int_field(buf, 20, attr_type);
    }
}

/// `NodeProto`: one operator application.
#[derive(Debug)]
struct Node {
    inputs: Vec<String>,
    outputs: Vec<String>,
    name: String,
    op_type: String,
    attributes: Vec<Attribute>,
}

impl Message for Node {
    fn encoded_len(&self) -> usize {
        self.inputs
            .iter()
            .map(|s| len_field_len(1, s.len()))
            .sum::<usize>()
            + self
                .outputs
                .iter()
                .map(|s| len_field_len(2, s.len()))
                .sum::<usize>()
            + len_field_len(3, self.name.len())
            + len_field_len(4, self.op_type.len())
            + self
                .attributes
                .iter()
                .map(|a| message_field_len(5, a))
                .sum::<usize>()
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        for input in &self.inputs {
            put_bytes_field(buf, 1, input.as_bytes());
        }
        for output in &self.outputs {
            put_bytes_field(buf, 2, output.as_bytes());
        }
        put_bytes_field(buf, 3, self.name.as_bytes());
        put_bytes_field(buf, 4, self.op_type.as_bytes());
        for attribute in &self.attributes {
            put_message_field(buf, 5, attribute);
        }
    }
}

/// `TensorProto` holding float32 data as little-endian `raw_data`.
#[derive(Debug)]
struct Tensor {
    dims: Vec<i64>,
    name: String,
    raw_data: Vec<u8>,
}

impl Message for Tensor {
    fn encoded_len(&self) -> usize {
        self.dims
            .iter()
            .map(|&d| int_field_len(1, d))
            .sum::<usize>()
            + int_field_len(2, DATA_TYPE_FLOAT)
            + len_field_len(8, self.name.len())
            + len_field_len(9, self.raw_data.len())
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        for &d in &self.dims {
            put_int_field(buf, 1, d);
        }
        put_int_field(buf, 2, DATA_TYPE_FLOAT);
        put_bytes_field(buf, 8, self.name.as_bytes());
        put_bytes_field(buf, 9, &self.raw_data);
    }
}

/// One dimension of a graph input or output (`TensorShapeProto.Dimension`):
/// a fixed size (`dim_value`) or a name (`dim_param`) that runtimes treat as
/// "any size, the same wherever the name recurs", e.g. a batch dimension.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl Message for Dim {
    fn encoded_len(&self) -> usize {
        match self {
            Dim::Fixed(v) => int_field_len(1, *v),
            Dim::Named(name) => len_field_len(2, name.len()),
        }
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        match self {
            Dim::Fixed(v) => put_int_field(buf, 1, *v),
            Dim::Named(name) => put_bytes_field(buf, 2, name.as_bytes()),
        }
    }
}

/// `TensorShapeProto`.
struct Shape<'a>(&'a [Dim]);

impl Message for Shape<'_> {
    fn encoded_len(&self) -> usize {
        self.0.iter().map(|d| message_field_len(1, d)).sum()
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        for d in self.0 {
            put_message_field(buf, 1, d);
        }
    }
}

/// `TypeProto.Tensor`: a float tensor of the given shape.
struct TensorType<'a>(&'a [Dim]);

impl Message for TensorType<'_> {
    fn encoded_len(&self) -> usize {
        int_field_len(1, DATA_TYPE_FLOAT) + message_field_len(2, &Shape(self.0))
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        put_int_field(buf, 1, DATA_TYPE_FLOAT);
        put_message_field(buf, 2, &Shape(self.0));
    }
}

/// `TypeProto` whose `tensor_type` arm is set.
struct TypeProto<'a>(&'a [Dim]);

impl Message for TypeProto<'_> {
    fn encoded_len(&self) -> usize {
        message_field_len(1, &TensorType(self.0))
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        put_message_field(buf, 1, &TensorType(self.0));
    }
}

/// `ValueInfoProto` for a float tensor graph input or output.
#[derive(Debug)]
struct ValueInfo {
    name: String,
    dims: Vec<Dim>,
}

impl Message for ValueInfo {
    fn encoded_len(&self) -> usize {
        len_field_len(1, self.name.len()) + message_field_len(2, &TypeProto(&self.dims))
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        put_bytes_field(buf, 1, self.name.as_bytes());
        put_message_field(buf, 2, &TypeProto(&self.dims));
    }
}

/// A `GraphProto` under construction: float inputs/outputs, float
/// initializers and operator nodes, encoded in insertion order.
///
/// Nodes must be added in topological order (ONNX requires it).
#[derive(Debug)]
pub struct Graph {
    nodes: Vec<Node>,
    name: String,
    initializers: Vec<Tensor>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph {
            nodes: Vec::new(),
            name: name.to_owned(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Declares a float32 graph input with a fixed shape.
    pub fn add_input(&mut self, name: &str, dims: &[i64]) {
        self.add_input_dims(name, dims.iter().map(|&d| Dim::Fixed(d)).collect());
    }

    /// Declares a float32 graph input whose dimensions may be named.
    pub fn add_input_dims(&mut self, name: &str, dims: Vec<Dim>) {
        self.inputs.push(ValueInfo {
            name: name.to_owned(),
            dims,
        });
    }

    /// Declares a float32 graph output with a fixed shape.
    pub fn add_output(&mut self, name: &str, dims: &[i64]) {
        self.add_output_dims(name, dims.iter().map(|&d| Dim::Fixed(d)).collect());
    }

    /// Declares a float32 graph output whose dimensions may be named.
    pub fn add_output_dims(&mut self, name: &str, dims: Vec<Dim>) {
        self.outputs.push(ValueInfo {
            name: name.to_owned(),
            dims,
        });
    }

    /// Adds a float32 constant tensor; an empty `dims` makes a scalar.
    ///
    /// Values are streamed straight into the little-endian `raw_data` bytes,
    /// so callers can pass a generator without materialising a `Vec<f32>`.
    ///
    /// # Panics
    /// If the number of values differs from the product of `dims`.
    pub fn add_initializer(
        &mut self,
        name: &str,
        dims: &[i64],
        values: impl IntoIterator<Item = f32>,
    ) {
        let expected: i64 = dims.iter().product();
        let mut raw_data = Vec::with_capacity(expected as usize * 4);
        for v in values {
            raw_data.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            raw_data.len() as i64,
            expected * 4,
            "initializer {name}: value count does not match dims {dims:?}"
        );
        self.initializers.push(Tensor {
            dims: dims.to_vec(),
            name: name.to_owned(),
            raw_data,
        });
    }

    /// Appends an operator node of the default (`ai.onnx`) domain.
    pub fn add_node<'a>(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: impl IntoIterator<Item = (&'a str, Attr)>,
    ) {
        self.nodes.push(Node {
            inputs: inputs.iter().map(|&s| s.to_owned()).collect(),
            outputs: outputs.iter().map(|&s| s.to_owned()).collect(),
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attributes: attributes
                .into_iter()
                .map(|(name, value)| Attribute {
                    name: name.to_owned(),
                    value,
                })
                .collect(),
        });
    }
}

impl Message for Graph {
    fn encoded_len(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| message_field_len(1, n))
            .sum::<usize>()
            + len_field_len(2, self.name.len())
            + self
                .initializers
                .iter()
                .map(|t| message_field_len(5, t))
                .sum::<usize>()
            + self
                .inputs
                .iter()
                .map(|v| message_field_len(11, v))
                .sum::<usize>()
            + self
                .outputs
                .iter()
                .map(|v| message_field_len(12, v))
                .sum::<usize>()
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        for node in &self.nodes {
            put_message_field(buf, 1, node);
        }
        put_bytes_field(buf, 2, self.name.as_bytes());
        for tensor in &self.initializers {
            put_message_field(buf, 5, tensor);
        }
        for input in &self.inputs {
            put_message_field(buf, 11, input);
        }
        for output in &self.outputs {
            put_message_field(buf, 12, output);
        }
    }
}

/// `OperatorSetIdProto` for the default domain.
struct OpsetImport(i64);

impl Message for OpsetImport {
    fn encoded_len(&self) -> usize {
        len_field_len(1, 0) + int_field_len(2, self.0)
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        // The default ONNX domain is spelled as the empty string.
        put_bytes_field(buf, 1, b"");
        put_int_field(buf, 2, self.0);
    }
}

/// A `ModelProto`: a graph plus the versioning metadata runtimes check.
#[derive(Debug)]
pub struct Model {
    /// ONNX IR version (e.g. 7 for ONNX 1.7+ runtimes).
    pub ir_version: i64,
    /// Opset version of the default (`ai.onnx`) operator domain.
    pub opset_version: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
    pub graph: Graph,
}

impl Message for Model {
    fn encoded_len(&self) -> usize {
        int_field_len(1, self.ir_version)
            + len_field_len(2, self.producer_name.len())
            + len_field_len(3, self.producer_version.len())
            + len_field_len(6, self.doc_string.len())
            + message_field_len(7, &self.graph)
            + message_field_len(8, &OpsetImport(self.opset_version))
    }

    fn encode_fields(&self, buf: &mut Vec<u8>) {
        put_int_field(buf, 1, self.ir_version);
        put_bytes_field(buf, 2, self.producer_name.as_bytes());
        put_bytes_field(buf, 3, self.producer_version.as_bytes());
        put_bytes_field(buf, 6, self.doc_string.as_bytes());
        put_message_field(buf, 7, &self.graph);
        put_message_field(buf, 8, &OpsetImport(self.opset_version));
    }
}

impl Model {
    /// Serialises the model to the bytes of an `.onnx` file.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_fields(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        buf
    }

    #[test]
    fn varint_known_vectors() {
        let cases: [(u64, &[u8]); 8] = [
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (150, &[0x96, 0x01]), // the protobuf encoding guide's example
            (300, &[0xac, 0x02]),
            (16_384, &[0x80, 0x80, 0x01]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for (v, expected) in cases {
            assert_eq!(varint(v), expected, "varint({v})");
            assert_eq!(varint_len(v), expected.len(), "varint_len({v})");
        }
    }

    #[test]
    fn negative_int64_is_ten_bytes() {
        let mut buf = Vec::new();
        put_int_field(&mut buf, 3, -1);
        assert_eq!(
            buf,
            [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(int_field_len(3, -1), buf.len());
    }

    #[test]
    fn attribute_bytes() {
        let mut buf = Vec::new();
        let axis = Attribute {
            name: "axis".into(),
            value: Attr::Int(1),
        };
        axis.encode_fields(&mut buf);
        // name=1 "axis"; i=3 1; type=20 (tag 0xa0 0x01) INT=2.
        assert_eq!(
            buf,
            [0x0a, 4, b'a', b'x', b'i', b's', 0x18, 1, 0xa0, 0x01, 2]
        );
        assert_eq!(axis.encoded_len(), buf.len());

        buf.clear();
        let pads = Attribute {
            name: "p".into(),
            value: Attr::Ints(vec![1, 2]),
        };
        pads.encode_fields(&mut buf);
        // Unpacked repeated int64: one ints=8 tag (0x40) per element; INTS=7.
        assert_eq!(buf, [0x0a, 1, b'p', 0x40, 1, 0x40, 2, 0xa0, 0x01, 7]);
        assert_eq!(pads.encoded_len(), buf.len());
    }

    #[test]
    fn scalar_initializer_bytes() {
        let mut graph = Graph::new("g");
        graph.add_initializer("six", &[], [6.0]);
        let mut buf = Vec::new();
        graph.initializers[0].encode_fields(&mut buf);
        // No dims; data_type=2 FLOAT; name=8 "six"; raw_data=9 6.0f32 LE.
        assert_eq!(
            buf,
            [0x10, 1, 0x42, 3, b's', b'i', b'x', 0x4a, 4, 0x00, 0x00, 0xc0, 0x40]
        );
    }

    #[test]
    fn encoded_len_is_exact() {
        let mut graph = Graph::new("tiny");
        graph.add_input("x", &[1, 4]);
        graph.add_initializer("w", &[3, 4], (0..12).map(|i| i as f32));
        graph.add_initializer("b", &[3], [0.5; 3]);
        graph.add_node(
            "Gemm",
            "fc",
            &["x", "w", "b"],
            &["y"],
            [("transB", Attr::Int(1))],
        );
        graph.add_node("Softmax", "sm", &["y"], &["z"], [("axis", Attr::Int(-1))]);
        graph.add_output("z", &[1, 3]);
        let model = Model {
            ir_version: 7,
            opset_version: 13,
            producer_name: "test".into(),
            producer_version: "0".into(),
            // Longer than 127 bytes, so its length prefix is a two-byte varint.
            doc_string: "d".repeat(200),
            graph,
        };
        let bytes = model.encode();
        assert_eq!(bytes.len(), model.encoded_len());
        // ModelProto starts with ir_version=1 (tag 0x08) = 7.
        assert_eq!(bytes[..2], [0x08, 7]);
    }

    #[test]
    fn named_dimension_bytes() {
        let mut buf = Vec::new();
        Dim::Named("batch".into()).encode_fields(&mut buf);
        // dim_param=2 "batch".
        assert_eq!(buf, [0x12, 5, b'b', b'a', b't', b'c', b'h']);
        buf.clear();
        Dim::Fixed(224).encode_fields(&mut buf);
        // dim_value=1 224 (varint 0xe0 0x01).
        assert_eq!(buf, [0x08, 0xe0, 0x01]);
        let mut graph = Graph::new("g");
        graph.add_input_dims("x", vec![Dim::Named("batch".into()), Dim::Fixed(3)]);
        assert_eq!(graph.encoded_len(), {
            let mut b = Vec::new();
            graph.encode_fields(&mut b);
            b.len()
        });
    }

    #[test]
    #[should_panic(expected = "value count does not match")]
    fn initializer_size_mismatch_panics() {
        Graph::new("g").add_initializer("w", &[2, 2], [1.0; 3]);
    }
}
