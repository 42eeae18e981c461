//! Report documents from `fixtures/documents/`, synthetic buyer PII in each format the
//! redactor reads (a flat file, CSV, JSON, XML; the flat file also gzip-compressed), served by
//! the sandbox as getReportDocument answers and presigned-style downloads. They are the same
//! files `src/documents/tests.rs` redacts, so the sandbox, the unit tests and the end-to-end
//! tests share one copy of each. The files are compiled in (`include_bytes!`), so the binary
//! needs nothing beside it at run time.

/// Where fixture documents download from (`<prefix><report document id>`), standing in for S3.
pub(super) const FIXTURES_PATH: &str = "/_sandbox/fixtures/";

/// One report document the sandbox serves from `fixtures/documents/`.
#[derive(Debug)]
pub struct FixtureDocument {
    /// The `reportDocumentId` that getReportDocument answers for.
    pub id: &'static str,
    /// The file under `fixtures/documents/` (also the redacted one's name under `redacted/`).
    pub file: &'static str,
    /// The download's `Content-Type`, as S3 would send it.
    pub content_type: &'static str,
    /// Served gzip-compressed, announced by `compressionAlgorithm: GZIP` as Amazon does.
    pub gzip: bool,
    /// The document as the report holds it (before any compression).
    pub bytes: &'static [u8],
}

/// Every fixture report document.
pub const FIXTURE_DOCUMENTS: [FixtureDocument; 5] = [
    FixtureDocument {
        id: "SPGATE-FIXTURE-ORDERS-TSV",
        file: "orders.tsv",
        content_type: "text/tab-separated-values; charset=UTF-8",
        gzip: false,
        bytes: include_bytes!("../../fixtures/documents/orders.tsv"),
    },
    FixtureDocument {
        id: "SPGATE-FIXTURE-ORDERS-TSV-GZIP",
        file: "orders.tsv",
        content_type: "application/octet-stream",
        gzip: true,
        bytes: include_bytes!("../../fixtures/documents/orders.tsv"),
    },
    FixtureDocument {
        id: "SPGATE-FIXTURE-ORDERS-CSV",
        file: "orders.csv",
        content_type: "text/csv",
        gzip: false,
        bytes: include_bytes!("../../fixtures/documents/orders.csv"),
    },
    FixtureDocument {
        id: "SPGATE-FIXTURE-ORDERS-JSON",
        file: "orders.json",
        content_type: "application/json",
        gzip: false,
        bytes: include_bytes!("../../fixtures/documents/orders.json"),
    },
    FixtureDocument {
        id: "SPGATE-FIXTURE-ORDERS-XML",
        file: "orders.xml",
        content_type: "text/xml",
        gzip: false,
        bytes: include_bytes!("../../fixtures/documents/orders.xml"),
    },
];

/// The fixture document with this report document id.
pub(super) fn by_id(id: &str) -> Option<&'static FixtureDocument> {
    FIXTURE_DOCUMENTS.iter().find(|d| d.id == id)
}
