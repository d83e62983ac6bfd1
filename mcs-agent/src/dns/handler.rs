//! The request handler: answers one query from the current [`ZoneTable`]
//! (hickory does the framing, malformed messages and truncation), with
//! response rate limiting of UDP answers ([`ResponseLimiter`]).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use arc_swap::ArcSwapOption;
use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, LowerName, Record, RecordType},
};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tracing::debug;

use super::{
    rate_limit::{ResponseLimiter, Verdict},
    records::{Lookup, ZoneTable},
};

/// Largest UDP response: the DNS Flag Day 2020 size, which avoids IP
/// fragmentation; larger answers are truncated and retried over TCP.
const MAX_UDP_PAYLOAD: u16 = 1232;

pub(super) struct Handler {
    pub(super) origin: LowerName,
    pub(super) table: Arc<ArcSwapOption<ZoneTable>>,
    /// Rotates multi-record answers so clients that take the first address
    /// spread over all of them.
    pub(super) rotation: AtomicUsize,
    /// UDP response rate limiting; `None` when off.
    pub(super) limiter: Option<Arc<ResponseLimiter>>,
}

/// The response for one question.
enum Outcome<'a> {
    Error(ResponseCode),
    Records {
        code: ResponseCode,
        answers: Vec<&'a Record>,
        soa: Option<&'a Record>,
    },
}

impl Handler {
    fn answer<'a>(&self, request: &Request, table: Option<&'a ZoneTable>) -> Outcome<'a> {
        if request.metadata.op_code != OpCode::Query {
            return Outcome::Error(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return Outcome::Error(ResponseCode::FormErr); // not exactly one question
        };
        let name = info.query.name();
        let record_type = info.query.query_type();
        if !self.origin.zone_of(name) || info.query.query_class() != DNSClass::IN {
            return Outcome::Error(ResponseCode::Refused);
        }
        if matches!(record_type, RecordType::AXFR | RecordType::IXFR) {
            return Outcome::Error(ResponseCode::Refused); // no zone transfers
        }
        let Some(table) = table else {
            return Outcome::Error(ResponseCode::ServFail); // not loaded yet
        };
        match table.lookup(name, record_type) {
            Lookup::Answer(mut answers) => {
                if answers.len() > 1 {
                    let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
                    let by = turn % answers.len();
                    answers.rotate_left(by);
                }
                Outcome::Records {
                    code: ResponseCode::NoError,
                    answers,
                    soa: None,
                }
            }
            Lookup::NoData => Outcome::Records {
                code: ResponseCode::NoError,
                answers: Vec::new(),
                soa: Some(table.soa()),
            },
            Lookup::NxDomain => Outcome::Records {
                code: ResponseCode::NXDomain,
                answers: Vec::new(),
                soa: Some(table.soa()),
            },
            Lookup::NotInZone => Outcome::Error(ResponseCode::Refused),
        }
    }

    /// Whether (and how) a UDP response may go out under the rate limit.
    fn rate_limit(&self, request: &Request) -> Verdict {
        match &self.limiter {
            Some(limiter) if request.protocol() == Protocol::Udp => {
                limiter.check(request.src().ip())
            }
            _ => Verdict::Answer,
        }
    }
}

/// The header of a response not sent (rate limited).
fn unsent(request: &Request) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: Metadata::response_from_request(&request.metadata),
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let verdict = self.rate_limit(request);
        if verdict == Verdict::Drop {
            return unsent(request);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        // EDNS (RFC 6891): answer with OPT when asked with it; only version 0
        // exists. The payload bounds UDP responses (hickory truncates there).
        let mut response_edns = None;
        let mut bad_version = false;
        if let Some(request_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            bad_version = request_edns.version() > 0;
            response_edns = Some(edns);
        }
        let table = self.table.load_full();
        let outcome = if verdict == Verdict::Truncate {
            // Slipped: empty and truncated, so a real client retries over TCP.
            metadata.truncation = true;
            Outcome::Records {
                code: ResponseCode::NoError,
                answers: Vec::new(),
                soa: None,
            }
        } else if bad_version {
            Outcome::Error(ResponseCode::BADVERS)
        } else {
            self.answer(request, table.as_deref())
        };
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let response = match outcome {
            Outcome::Error(code) => {
                metadata.response_code = code;
                builder.build(metadata, Vec::new(), Vec::new(), None, Vec::new())
            }
            Outcome::Records { code, answers, soa } => {
                metadata.response_code = code;
                metadata.authoritative = verdict == Verdict::Answer;
                builder.build(metadata, answers, Vec::new(), soa, Vec::new())
            }
        };
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "cannot send DNS response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
