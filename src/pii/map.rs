//! The buyer-PII field map: for every operation whose responses carry buyer PII, where the PII
//! is (JSON paths and their [`Category`]) and where each record's order id is.
//!
//! The data lives in `data/pii-fields.tsv`, compiled into the binary and parsed once.
//! `tests/pii_map.rs` walks Amazon's models to prove every path exists and its `required` flag
//! matches the model. One line per fact, tab-separated (`#` lines are comments; the line starting
//! with `operation` is the header):
//!
//! ```text
//! <operation key>  record  <root path>  id=<alt>|<alt> [status=<rel>] [earliest=<rel>] [latest=<rel>] [delivered=<rel>:<value>]
//! <operation key>  field   <path>       <category>  <required 0|1>
//! <operation key>  link    <path>       [opaque] [compression=<sibling member>]
//! <operation key>  none    .
//! ```
//!
//! Paths are as sent on the wire, segments separated by `.`, `name[]` for the elements of an
//! array, `.` alone for the response root. A field path names one JSON value (string, object or
//! array); everything below it belongs to its category. A record root marks one order (or
//! shipment, purchase order, service job): `id` alternatives are paths relative to the record, or
//! `{param}` for a path parameter of the request, tried in order. The optional facts feed the
//! retention scheduler: order status, the earliest and latest promised delivery dates, and
//! `delivered` (true when every value at that path equals the given value).
//! `link` marks a URL to a document (a report, label, invoice, delivery photo...): for every
//! role it is replaced by the gateway's own signed link, whose download streams through the
//! role's policy (see `proxy::documents`); the optional `compression` member beside it names the
//! document's compression and is removed. `opaque` marks a document that cannot be redacted
//! field by field whatever it looks like (a label, invoice, photo or web page showing the buyer's
//! address): it is served only to roles that pass `document`. `none` keeps an operation in the map with no paths.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::LazyLock;

use super::Category;

/// The field map as compiled into the binary.
static PII_FIELDS_TSV: &str = include_str!("../../data/pii-fields.tsv");

static BUILTIN: LazyLock<FieldMap> = LazyLock::new(|| {
    // The data is fixed at compile time and `the_builtin_map_parses` proves it parses.
    FieldMap::parse(PII_FIELDS_TSV).expect("data/pii-fields.tsv is valid (checked by tests)")
});

/// Why the field map data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A line does not have the expected columns or values.
    #[error("pii-fields.tsv line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Every operation's buyer-PII map, by operation key (`<model>.<operationId>`).
#[derive(Debug)]
pub struct FieldMap {
    ops: OpKeyMap<OpMap>,
}

/// A map keyed by operation key (`ordersV0.getOrder`), hashed with [`OpKeyHasher`].
pub(crate) type OpKeyMap<V> = HashMap<&'static str, V, BuildHasherDefault<OpKeyHasher>>;

/// FxHash's multiply-rotate step, 8 bytes at a time: the field map and the classifier's list
/// are looked up about ten times per request (the PII gate, the policy, the transform), where
/// SipHash cost ~270 instructions a lookup. They are built once from the compiled-in data and
/// never take a key from a client, so a keyed hash buys nothing there.
#[derive(Default)]
pub(crate) struct OpKeyHasher(u64);

impl std::hash::Hasher for OpKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x517c_c1b7_2722_0a95;
        let step = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(SEED);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = step(self.0, u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.0 = step(self.0, u64::from(b));
        }
    }
}

/// One operation's map.
#[derive(Debug)]
pub struct OpMap {
    /// The operation key, e.g. `ordersV0.getOrder`.
    pub key: &'static str,
    /// Record roots and their order-id sources, in file order.
    pub records: Vec<RecordSpec>,
    /// Buyer-PII paths, in file order.
    pub fields: Vec<FieldSpec>,
    /// Document URLs the gateway replaces with its own signed links, in file order.
    pub links: Vec<LinkSpec>,
    /// The paths as a tree, for one walk over a response.
    pub(crate) tree: Node,
}

/// A buyer-PII path.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The path from the response root, e.g. `payload.Orders[].BuyerInfo.BuyerEmail`.
    pub path: &'static str,
    /// What kind of PII it is.
    pub category: Category,
    /// Whether the model marks the field required in its parent object (a dropped required field
    /// keeps its key with an empty value, so SDKs still deserialize the response).
    pub required: bool,
}

/// A URL to a buyer document, rewritten to the gateway's signed link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// The path of the URL string from the response root, e.g. `invoicesDocument.invoicesDocumentUrl`.
    pub path: &'static str,
    /// The member beside the URL that names the document's compression (e.g.
    /// `compressionAlgorithm`), removed from the response: the gateway serves it decompressed.
    pub compression: Option<&'static str>,
    /// Whether the document is opaque (served only to roles passing `document`) rather than a
    /// structured file redacted field by field.
    pub opaque: bool,
}

/// A record root (one order, purchase order, shipment or service job) and where its id is.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSpec {
    /// The path of the record from the response root (`.` for the root itself).
    pub root: &'static str,
    /// Where the record's order id is, tried in order.
    pub id: Vec<IdSource>,
    /// Order status, relative to the record.
    pub status: Option<&'static str>,
    /// Earliest promised delivery date, relative to the record.
    pub earliest_delivery: Option<&'static str>,
    /// Latest promised delivery date, relative to the record.
    pub latest_delivery: Option<&'static str>,
    /// Path (relative to the record) and value that mean "delivered".
    pub delivered: Option<(&'static str, &'static str)>,
}

/// Where a record's order id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    /// A string (or number) at this path relative to the record, e.g. `AmazonOrderId`.
    Field(&'static str),
    /// The request's path parameter of this name, e.g. `orderId`.
    Param(&'static str),
}

/// A node of the path tree: object members, array elements, and what is mapped here.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Object members by name (a short list: a linear scan beats hashing here).
    pub(crate) members: Vec<(&'static str, Node)>,
    /// Array elements (`[]`).
    pub(crate) items: Option<Box<Node>>,
    /// A PII value: everything at and below this node.
    pub(crate) leaf: Option<Leaf>,
    /// A record root: index into [`OpMap::records`].
    pub(crate) record: Option<usize>,
    /// Whether a leaf sits below this node (a string here means the shape is not the model's).
    pub(crate) pii_below: bool,
}

/// What a leaf node holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leaf {
    pub(crate) category: Category,
    pub(crate) required: bool,
}

/// One segment of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// An object member.
    Member(&'a str),
    /// Every element of an array.
    Items,
}

// === impl FieldMap ===

impl FieldMap {
    /// The map compiled into the binary.
    pub fn builtin() -> &'static FieldMap {
        &BUILTIN
    }

    /// One operation's map, by key (`ordersV0.getOrder`); `None` when the operation carries no
    /// buyer PII.
    pub fn get(&self, op_key: &str) -> Option<&OpMap> {
        self.ops.get(op_key)
    }

    /// Every mapped operation key, sorted.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys: Vec<_> = self.ops.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Parses the map TSV (see the module docs for the format).
    pub fn parse(tsv: &'static str) -> Result<FieldMap, MapError> {
        let mut ops: OpKeyMap<OpMap> = OpKeyMap::default();
        for (i, line) in tsv.lines().enumerate() {
            let line_no = i + 1;
            if line.starts_with('#') || line.trim().is_empty() || line.starts_with("operation\t") {
                continue;
            }
            let bad = |reason: String| MapError::BadLine {
                line: line_no,
                reason,
            };
            let cols: Vec<&'static str> = line.split('\t').collect();
            let (key, kind, path) = match cols.as_slice() {
                [key, kind, path, ..] if !key.is_empty() => (*key, *kind, *path),
                _ => return Err(bad("expected operation, kind and path".into())),
            };
            let segments = parse_path(path).ok_or_else(|| bad(format!("bad path {path:?}")))?;
            let op = ops.entry(key).or_insert_with(|| OpMap {
                key,
                records: Vec::new(),
                fields: Vec::new(),
                links: Vec::new(),
                tree: Node::default(),
            });
            match kind {
                "field" => {
                    let category = cols
                        .get(3)
                        .ok_or_else(|| bad("missing category".into()))?
                        .parse::<Category>()
                        .map_err(bad)?;
                    let required = match cols.get(4).copied() {
                        Some("1") => true,
                        Some("0") => false,
                        _ => return Err(bad("required must be 0 or 1".into())),
                    };
                    if segments.is_empty() {
                        return Err(bad("the response root cannot be a PII field".into()));
                    }
                    if op.fields.iter().any(|f| f.path == path)
                        || op.links.iter().any(|l| l.path == path)
                    {
                        return Err(bad(format!("duplicate path {path}")));
                    }
                    let node = op.tree.descend(&segments);
                    if node.leaf.is_some() || !node.members.is_empty() || node.items.is_some() {
                        return Err(bad(format!("{path} overlaps another PII path")));
                    }
                    node.leaf = Some(Leaf { category, required });
                    op.fields.push(FieldSpec {
                        path,
                        category,
                        required,
                    });
                }
                "record" => {
                    let spec =
                        parse_record(path, cols.get(3).copied().unwrap_or("")).map_err(bad)?;
                    let index = op.records.len();
                    let node = op.tree.descend(&segments);
                    if node.record.is_some() {
                        return Err(bad(format!("duplicate record root {path}")));
                    }
                    node.record = Some(index);
                    op.records.push(spec);
                }
                "link" => {
                    if segments.is_empty() {
                        return Err(bad("the response root cannot be a link".into()));
                    }
                    if op.links.iter().any(|l| l.path == path)
                        || op.fields.iter().any(|f| f.path == path)
                    {
                        return Err(bad(format!("duplicate path {path}")));
                    }
                    let mut spec = LinkSpec {
                        path,
                        compression: None,
                        opaque: false,
                    };
                    for attr in cols.get(3).copied().unwrap_or("").split(' ') {
                        match attr.split_once('=') {
                            None if attr.is_empty() => {}
                            None if attr == "opaque" => spec.opaque = true,
                            Some(("compression", member))
                                if !member.is_empty() && !member.contains('.') =>
                            {
                                spec.compression = Some(member)
                            }
                            _ => return Err(bad(format!("bad link attribute {attr:?}"))),
                        }
                    }
                    op.links.push(spec);
                }
                "none" => {}
                other => return Err(bad(format!("unknown kind {other:?}"))),
            }
        }
        for op in ops.values_mut() {
            // A link is rewritten, never transformed: no PII path may hold it.
            if let Some(link) = op.links.iter().find(|l| {
                op.fields.iter().any(|f| {
                    l.path
                        .strip_prefix(f.path)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                })
            }) {
                return Err(MapError::BadLine {
                    line: 0,
                    reason: format!("{}: the link {} lies below a PII path", op.key, link.path),
                });
            }
            op.tree.mark_pii_below();
            // A leaf may not sit above a record root or another leaf.
            if !op.tree.leaves_are_terminal() {
                return Err(MapError::BadLine {
                    line: 0,
                    reason: format!("{}: a PII path has paths below it", op.key),
                });
            }
        }
        Ok(FieldMap { ops })
    }
}

// === impl OpMap ===

impl OpMap {
    /// The categories this operation's responses may carry, sorted, without duplicates.
    pub fn categories(&self) -> Vec<Category> {
        let set: BTreeSet<Category> = self.fields.iter().map(|f| f.category).collect();
        set.into_iter().collect()
    }
}

// === impl Node ===

impl Node {
    fn descend(&mut self, segments: &[Segment<'static>]) -> &mut Node {
        let mut node = self;
        for segment in segments {
            node = match segment {
                Segment::Items => node.items.get_or_insert_with(Box::default),
                Segment::Member(name) => {
                    let pos = match node.members.iter().position(|(n, _)| n == name) {
                        Some(pos) => pos,
                        None => {
                            node.members.push((name, Node::default()));
                            node.members.len() - 1
                        }
                    };
                    &mut node.members[pos].1
                }
            };
        }
        node
    }

    /// The node for an object member, if mapped.
    pub(crate) fn member(&self, name: &str) -> Option<&Node> {
        self.members
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, node)| node)
    }

    /// Sets `pii_below` on every node; returns whether this node is or holds a leaf.
    fn mark_pii_below(&mut self) -> bool {
        let mut below = false;
        for (_, child) in &mut self.members {
            below |= child.mark_pii_below();
        }
        if let Some(items) = &mut self.items {
            below |= items.mark_pii_below();
        }
        self.pii_below = below;
        below || self.leaf.is_some()
    }

    fn leaves_are_terminal(&self) -> bool {
        if self.leaf.is_some() {
            return self.members.is_empty() && self.items.is_none() && self.record.is_none();
        }
        self.members.iter().all(|(_, n)| n.leaves_are_terminal())
            && self.items.as_ref().is_none_or(|n| n.leaves_are_terminal())
    }
}

/// Splits a path into segments: `a.b[].c` -> `[a, b, [], c]`; `.` is the root (no segments).
/// `None` for an empty segment or a stray `[]`.
pub fn parse_path(path: &str) -> Option<Vec<Segment<'_>>> {
    if path == "." {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, items) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        if name.is_empty() || name.contains('[') || name.contains(']') {
            return None;
        }
        out.push(Segment::Member(name));
        if items {
            out.push(Segment::Items);
        }
    }
    Some(out)
}

fn parse_record(root: &'static str, attrs: &'static str) -> Result<RecordSpec, String> {
    let mut spec = RecordSpec {
        root,
        id: Vec::new(),
        status: None,
        earliest_delivery: None,
        latest_delivery: None,
        delivered: None,
    };
    let rel_path = |p: &'static str| -> Result<&'static str, String> {
        match parse_path(p) {
            Some(segments) if !segments.is_empty() => Ok(p),
            _ => Err(format!("bad relative path {p:?}")),
        }
    };
    for attr in attrs.split(' ').filter(|a| !a.is_empty()) {
        let (name, value) = attr
            .split_once('=')
            .ok_or_else(|| format!("record attribute {attr:?} is not name=value"))?;
        match name {
            "id" => {
                for alt in value.split('|') {
                    let source = match alt.strip_prefix('{').and_then(|a| a.strip_suffix('}')) {
                        Some(param) if !param.is_empty() => IdSource::Param(param),
                        Some(_) => return Err("empty path parameter name".into()),
                        None => IdSource::Field(rel_path(alt)?),
                    };
                    spec.id.push(source);
                }
            }
            "status" => spec.status = Some(rel_path(value)?),
            "earliest" => spec.earliest_delivery = Some(rel_path(value)?),
            "latest" => spec.latest_delivery = Some(rel_path(value)?),
            "delivered" => {
                let (path, expected) = value
                    .split_once(':')
                    .ok_or_else(|| "delivered must be <path>:<value>".to_string())?;
                spec.delivered = Some((rel_path(path)?, expected));
            }
            other => return Err(format!("unknown record attribute {other:?}")),
        }
    }
    if spec.id.is_empty() {
        return Err("a record needs id=...".into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_map_parses_and_indexes_every_path() {
        let map = FieldMap::builtin();
        assert!(map.keys().len() >= 49, "{}", map.keys().len());
        let op = map.get("ordersV0.getOrders").expect("getOrders is mapped");
        assert_eq!(op.records[0].root, "payload.Orders[]");
        assert_eq!(op.records[0].id, vec![IdSource::Field("AmazonOrderId")]);
        let email = op
            .fields
            .iter()
            .find(|f| f.path == "payload.Orders[].BuyerInfo.BuyerEmail")
            .expect("BuyerEmail is mapped");
        assert_eq!(email.category, Category::Email);
        let leaf = op
            .tree
            .member("payload")
            .and_then(|n| n.member("Orders"))
            .and_then(|n| n.items.as_deref())
            .and_then(|n| n.member("BuyerInfo"))
            .and_then(|n| n.member("BuyerEmail"))
            .and_then(|n| n.leaf)
            .expect("the tree has the leaf");
        assert_eq!(leaf.category, Category::Email);
        let report = map.get("reports_2021-06-30.getReportDocument").unwrap();
        assert!(report.fields.is_empty() && report.records.is_empty());
        assert_eq!(
            report.links,
            vec![LinkSpec {
                path: "url",
                compression: Some("compressionAlgorithm"),
                opaque: false,
            }]
        );
        assert!(map.get("sellers.getMarketplaceParticipations").is_none());
    }

    #[test]
    fn a_name_phone_or_email_has_its_own_category_wherever_it_sits() {
        // Tax registration addresses included: only their address lines are the tax address.
        let mut wrong = Vec::new();
        for key in FieldMap::builtin().keys() {
            for field in &FieldMap::builtin().get(key).unwrap().fields {
                let last = field
                    .path
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .trim_end_matches("[]");
                let last = last.to_ascii_lowercase();
                let expected = if last.contains("phone") {
                    Some(Category::Phone)
                } else if last.contains("email") {
                    Some(Category::Email)
                } else if [
                    "name",
                    "buyername",
                    "attention",
                    "receivedby",
                    "signedforby",
                ]
                .contains(&last.as_str())
                    && !field.path.contains("TaxClassifications[]")
                {
                    Some(Category::Name)
                } else {
                    None
                };
                if expected.is_some_and(|c| c != field.category) {
                    wrong.push(format!("{key} {} {}", field.path, field.category));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn paths_parse_into_members_and_items() {
        assert_eq!(parse_path("."), Some(vec![]));
        assert_eq!(
            parse_path("a.b[].c"),
            Some(vec![
                Segment::Member("a"),
                Segment::Member("b"),
                Segment::Items,
                Segment::Member("c")
            ])
        );
        for bad in ["", "a..b", "[]", "a.[]", "a[0]", "a[].", ".a"] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_lines_are_rejected_with_their_line_number() {
        let cases = [
            "op\tfield\ta.b\tpostcode\t0",
            "op\tfield\ta.b\tname\tyes",
            "op\tfield\t.\tname\t0",
            "op\tfield\ta..b\tname\t0",
            "op\trecord\ta\tstatus=S",
            "op\trecord\ta\tid=A nope=B",
            "op\tfield\ta.b\tname\t0\nop\tfield\ta.b\tname\t0",
            "op\tfield\ta\tname\t0\nop\tfield\ta.b\tname\t0",
            "op\tfield\ta.b\tname\t0\nop\tfield\ta\tname\t0",
            "op\tfield\ta\tname\t0\nop\trecord\ta.b\tid=X",
            "op\tsomething\ta\t",
            "op\tlink\t.\t",
            "op\tlink\ta\tcompression=",
            "op\tlink\ta\tzip=b",
            "op\tlink\ta\topaque=1",
            "op\tfield\ta\tdocument\t0\nop\tlink\ta\t",
            "op\tfield\ta\tdocument\t0\nop\tlink\ta.url\t",
        ];
        for tsv in cases {
            assert!(FieldMap::parse(tsv).is_err(), "{tsv}");
        }
        let ok = FieldMap::parse(
            "op\trecord\t.\tid=Id|{orderId} delivered=p[].s:DONE\nop\tfield\ta[].b\tname\t1",
        )
        .unwrap();
        let op = ok.get("op").unwrap();
        assert_eq!(
            op.records[0].id,
            vec![IdSource::Field("Id"), IdSource::Param("orderId")]
        );
        assert_eq!(op.records[0].delivered, Some(("p[].s", "DONE")));
        assert!(op.fields[0].required);
    }
}
