//! A client connection to an edgeinfer server: what `edgeinfer infer`, the tests and the
//! built-in fleet use to talk to it, over the same protocol a device would.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::protocol::codec::frame_codec;
use crate::protocol::frame::REQUEST_HEADER_LEN;
use crate::protocol::{Request, Response};

/// How a request's bytes reach the socket: all at once, or paced by an emulated link
/// ([`crate::fleet::link::Link`]).
pub trait Uplink: Sync {
    /// Writes one whole frame, given as its head (length prefix, header, token) and its image.
    fn send(&self, socket: &mut TcpStream, head: &[u8], image: &[u8]) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

/// No emulated link: the bytes go as fast as the socket takes them.
pub struct Direct;

impl Uplink for Direct {
    /// One vectored write for the whole frame (tokio's `write_all_buf` over the two parts chained;
    /// more writes only if the socket takes part of it): with `TCP_NODELAY`, writing the head and
    /// the image apart sends two segments, and the server wakes for the head alone, reads it, and
    /// waits again for the image — one more send path, wake-up and read per request on both sides.
    async fn send(&self, socket: &mut TcpStream, head: &[u8], image: &[u8]) -> std::io::Result<()> {
        socket.write_all_buf(&mut head.chain(image)).await
    }
}

/// Largest response a client accepts; responses are small (top-k, a name, a message).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

pub struct Client {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    client_id: u32,
    next_id: u64,
    pub token: String,
    pub timeout: Duration,
}

impl Client {
    pub async fn connect(addr: impl ToSocketAddrs, client_id: u32) -> Result<Client> {
        let socket = TcpStream::connect(addr).await.context("cannot connect to the edgeinfer server")?;
        socket.set_nodelay(true)?;
        Ok(Client {
            framed: Framed::new(socket, frame_codec(MAX_RESPONSE_BYTES)),
            client_id,
            next_id: 1,
            token: String::new(),
            timeout: Duration::from_secs(60),
        })
    }

    /// Sends one image and waits for its response.
    pub async fn infer(&mut self, image: Bytes, resolution: u16) -> Result<Response> {
        self.infer_via(image, resolution, &Direct).await
    }

    /// Sends one image through `uplink` (which decides how fast its bytes reach the socket) and
    /// waits for its response. The image is written from its own buffer, never copied.
    pub async fn infer_via(&mut self, image: Bytes, resolution: u16, uplink: &impl Uplink) -> Result<Response> {
        let request_id = self.next_id;
        self.next_id += 1;
        let req = Request { request_id, client_id: self.client_id, resolution, token: self.token.clone(), image };
        let mut head = BytesMut::with_capacity(4 + REQUEST_HEADER_LEN + req.token.len());
        let body_len = REQUEST_HEADER_LEN + req.token.len() + req.image.len();
        head.put_u32(u32::try_from(body_len).context("request larger than 4 GiB")?);
        req.encode_head(&mut head);
        // The codec's write buffer is empty (frames are only ever sent whole), so writing to the
        // socket directly keeps the byte stream framed.
        uplink.send(self.framed.get_mut(), &head, &req.image).await.context("cannot send request")?;
        let resp = self.recv().await?;
        if resp.request_id != request_id {
            bail!("response for request {} while waiting for {request_id}", resp.request_id);
        }
        Ok(resp)
    }

    /// Sends an arbitrary frame body (tests use this for malformed requests).
    pub async fn send_raw(&mut self, body: Bytes) -> Result<()> {
        self.framed.send(body).await.context("cannot send request")
    }

    pub async fn recv(&mut self) -> Result<Response> {
        let frame = tokio::time::timeout(self.timeout, self.framed.next())
            .await
            .map_err(|_| anyhow!("no response within {:?}", self.timeout))?
            .ok_or_else(|| anyhow!("server closed the connection"))?
            .context("cannot read response")?;
        Ok(Response::decode(&frame)?)
    }
}
