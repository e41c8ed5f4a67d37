#!/usr/bin/env node
// A Node.js AugmentService client: @grpc/grpc-js with @grpc/proto-loader, loading
// protos/ as they are (no generated code). It streams a tar.gz layer with
// UploadLayer (client streaming, honouring back-pressure), creates an augmented
// image with it, asks for the request's status, and prints one JSON line.
//
//   node tests/node/create_container.js HOST:PORT IMAGE LAYER.tar.gz [NAME=VALUE ...]
//
// Caller token: WAVE_GRPC_TOKEN (sent as "authorization: Bearer <token>").
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const CHUNK = 1 << 20;

function loadService() {
  const definition = protoLoader.loadSync(path.join(PROTOS, 'wave', 'augment', 'v1', 'augment.proto'), {
    includeDirs: [PROTOS],
    // Field names become lowerCamelCase (container_image -> containerImage), as in Wave's JSON.
    keepCase: false,
    longs: String,
    enums: String,
    defaults: false,
  });
  return grpc.loadPackageDefinition(definition).wave.augment.v1.AugmentService;
}

function metadata() {
  const md = new grpc.Metadata();
  if (process.env.WAVE_GRPC_TOKEN) md.set('authorization', `Bearer ${process.env.WAVE_GRPC_TOKEN}`);
  return md;
}

function uploadLayer(client, file) {
  return new Promise((resolve, reject) => {
    const call = client.UploadLayer(metadata(), (err, response) => (err ? reject(err) : resolve(response)));
    call.write({ gzipSize: String(fs.statSync(file).size) });
    const input = fs.createReadStream(file, { highWaterMark: CHUNK });
    input.on('data', (chunk) => {
      if (!call.write({ chunk })) {
        input.pause();
        call.once('drain', () => input.resume());
      }
    });
    input.on('error', (err) => {
      call.cancel();
      reject(err);
    });
    input.on('end', () => call.end());
  });
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: Date.now() + 60_000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

async function main() {
  const [server, image, layerFile, ...env] = process.argv.slice(2);
  if (!server || !image || !layerFile) {
    console.error('usage: create_container.js HOST:PORT IMAGE LAYER.tar.gz [NAME=VALUE ...]');
    process.exit(2);
  }
  const AugmentService = loadService();
  const client = new AugmentService(server, grpc.credentials.createInsecure());
  try {
    const uploaded = await uploadLayer(client, layerFile);
    const created = await unary(client, 'CreateContainer', {
      containerImage: image,
      containerPlatform: 'linux/amd64',
      containerConfig: { env, layers: [uploaded.layer] },
    });
    const status = await unary(client, 'GetContainerStatus', { requestId: created.requestId });
    console.log(
      JSON.stringify({
        layer: uploaded.layer,
        created: uploaded.created,
        targetImage: created.targetImage,
        containerToken: created.containerToken,
        requestId: created.requestId,
        status: status.status,
      }),
    );
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.error(`create_container.js: ${err.code !== undefined ? `gRPC ${err.code}: ` : ''}${err.details || err.message}`);
  process.exit(1);
});
