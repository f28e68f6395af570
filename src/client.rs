//! A client connection to an edgeinfer server: what `edgeinfer infer`, the tests and the
//! built-in fleet use to talk to it, over the same protocol a device would.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::protocol::codec::frame_codec;
use crate::protocol::{Request, Response};

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
        let request_id = self.next_id;
        self.next_id += 1;
        let req = Request { request_id, client_id: self.client_id, resolution, token: self.token.clone(), image };
        let mut buf = BytesMut::new();
        req.encode(&mut buf);
        self.send_raw(buf.freeze()).await?;
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
