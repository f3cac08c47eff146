// Entry point of the torus_native addon. Each concern lives in its own file
// and registers its functions here; src/util/crc32c.ts is the JS side of the
// CRC functions. The addon must stay optional: torus falls back to pure JS
// when it is missing, so nothing here may be the only implementation of a
// feature torus needs to run (kernel-only features excepted).
//
// Adding functions: put them in a new src/<concern>.cc (plain C++ behind a
// small header, N-API glue here), list the file in binding.gyp's sources, and
// register the JS function in Init below. Errors go back as pending JS
// exceptions (the addon is built without C++ exceptions).
#include <napi.h>

#include "crc32c.h"
#include "nowait-io.h"
#include "read-batch.h"
#include "kernel-nbd.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>
#include <unistd.h>

namespace {

using CrcFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);

// crc32c(data: Uint8Array, initial?: number): number
// `initial` is a previous result, to continue a CRC across buffers.
template <CrcFn fn>
Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) {
    Napi::TypeError::New(env, "crc32c: data must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array data = info[0].As<Napi::Uint8Array>();
  if (data.TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, "crc32c: data must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t initial = 0;
  if (info.Length() >= 2 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber()) {
      Napi::TypeError::New(env, "crc32c: initial must be a number").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    initial = info[1].As<Napi::Number>().Uint32Value();
  }
  uint32_t crc = fn(initial, data.Data(), data.ByteLength());
  return Napi::Number::New(env, static_cast<double>(crc));
}

// crc32cPages(data: Uint8Array, pageBytes: number, out: Uint32Array): void
// The CRC of each page of `data` into out[i]: one call per block read or
// write instead of one per 4 KiB page (a call costs about as much as the CRC).
Napi::Value Crc32cPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray()) {
    Napi::TypeError::New(env, "crc32cPages: (data, pageBytes, out)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array data = info[0].As<Napi::Uint8Array>();
  Napi::TypedArray outArr = info[2].As<Napi::TypedArray>();
  int64_t page = info[1].As<Napi::Number>().Int64Value();
  if (data.TypedArrayType() != napi_uint8_array || outArr.TypedArrayType() != napi_uint32_array || page <= 0 ||
      data.ByteLength() % static_cast<size_t>(page) != 0 || outArr.ElementLength() < data.ByteLength() / static_cast<size_t>(page)) {
    Napi::RangeError::New(env, "crc32cPages: data must be whole pages and out long enough").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint32Array out = info[2].As<Napi::Uint32Array>();
  const size_t pages = data.ByteLength() / static_cast<size_t>(page);
  for (size_t i = 0; i < pages; i++) out[i] = torus::crc32c(0, data.Data() + i * page, static_cast<size_t>(page));
  return env.Undefined();
}

using IoFn = int64_t (*)(int, uint8_t*, size_t, int64_t);

// preadNowait(fd, buffer, offset, length, position): bytes read,
// or -errno (-EAGAIN: would block; use the thread pool). Argument checks are
// the caller's (src/store/nowait-io.ts); a bad range is still refused here.
template <IoFn fn>
Napi::Value NowaitIo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsNumber() || !info[3].IsNumber() || !info[4].IsNumber()) {
    Napi::TypeError::New(env, "nowait io: (fd, buffer, offset, length, position)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  int64_t off = info[2].As<Napi::Number>().Int64Value();
  int64_t len = info[3].As<Napi::Number>().Int64Value();
  if (off < 0 || len < 0 || static_cast<uint64_t>(off + len) > buf.ByteLength()) {
    Napi::RangeError::New(env, "nowait io: range outside the buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t n = fn(info[0].As<Napi::Number>().Int32Value(), buf.Data() + off, static_cast<size_t>(len), info[4].As<Napi::Number>().Int64Value());
  return Napi::Number::New(env, static_cast<double>(n));
}

// readBatchNowait(buffers, spec, results): reads many ranges from the page
// cache in one system call (read-batch.h). `spec` is a Float64Array of four
// numbers per read (fd, offset in its buffer, length, file position);
// results[i] is set to read i's bytes or -errno (-EAGAIN: not cached).
// Returns 0, or -errno when the batch could not be submitted (the caller
// reads one by one). Every range is checked against its buffer first.
Napi::Value ReadBatchNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray()) {
    Napi::TypeError::New(env, "readBatchNowait: (buffers, spec, results)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array bufs = info[0].As<Napi::Array>();
  Napi::TypedArray specArr = info[1].As<Napi::TypedArray>();
  Napi::TypedArray resArr = info[2].As<Napi::TypedArray>();
  const size_t n = bufs.Length();
  if (specArr.TypedArrayType() != napi_float64_array || resArr.TypedArrayType() != napi_float64_array ||
      specArr.ElementLength() < n * 4 || resArr.ElementLength() < n || n > torus::kReadBatchMax) {
    Napi::RangeError::New(env, "readBatchNowait: spec needs 4 numbers and results 1 per buffer, at most 64 reads").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float64Array spec = info[1].As<Napi::Float64Array>();
  Napi::Float64Array res = info[2].As<Napi::Float64Array>();
  torus::BatchRead reads[torus::kReadBatchMax];
  for (size_t i = 0; i < n; i++) {
    Napi::Value v = bufs[static_cast<uint32_t>(i)];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      Napi::TypeError::New(env, "readBatchNowait: every buffer must be a Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    const double fd = spec[i * 4], off = spec[i * 4 + 1], len = spec[i * 4 + 2], pos = spec[i * 4 + 3];
    if (!(fd >= 0 && fd <= 2147483647.0) || !(off >= 0) || !(len >= 0) || !(pos >= 0) || !(len <= 2147479552.0) ||
        off + len > static_cast<double>(b.ByteLength()) || pos > 9007199254740991.0) {
      Napi::RangeError::New(env, "readBatchNowait: a read's range lies outside its buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    reads[i] = {static_cast<int>(fd), b.Data() + static_cast<size_t>(off), static_cast<size_t>(len), static_cast<int64_t>(pos), 0};
  }
  int r = torus::read_batch_nowait(reads, n);
  if (r == 0) {
    for (size_t i = 0; i < n; i++) res[i] = static_cast<double>(reads[i].result);
  }
  return Napi::Number::New(env, r);
}

// threadWaits(): voluntary context switches of the calling thread so far, or
// -errno (see nowait-io.h).
Napi::Value ThreadWaits(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(torus::thread_waits()));
}

// addressModulo(data: Uint8Array, modulus: number): the address of data's
// first byte modulo `modulus` (a power of two up to 64 KiB). JavaScript
// cannot see where a buffer lies; the buffer pool uses this to start its
// buffers on a 64-byte boundary (src/util/buffer-pool.ts says why).
Napi::Value AddressModulo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "addressModulo: (data, modulus)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::TypedArray data = info[0].As<Napi::TypedArray>();
  int64_t m = info[1].As<Napi::Number>().Int64Value();
  if (m <= 0 || m > 65536 || (m & (m - 1)) != 0) {
    Napi::RangeError::New(env, "addressModulo: modulus must be a power of two up to 65536").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uintptr_t at = reinterpret_cast<uintptr_t>(data.ArrayBuffer().Data()) + data.ByteOffset();
  return Napi::Number::New(env, static_cast<double>(at & static_cast<uintptr_t>(m - 1)));
}

// syncfs(fd, callback(errno)): flushes the whole file system holding fd on a
// libuv worker thread (it blocks for milliseconds). One syncfs replaces an
// fdatasync per dirty block file plus an fsync per changed folder.
class SyncfsWorker : public Napi::AsyncWorker {
 public:
  SyncfsWorker(const Napi::Function& cb, int fd) : Napi::AsyncWorker(cb, "torus.syncfs"), fd_(fd) {}
  void Execute() override {
#if defined(__linux__)
    if (::syncfs(fd_) != 0) err_ = errno;
#else
    err_ = ENOSYS;
#endif
  }
  void OnOK() override { Callback().Call({Napi::Number::New(Env(), err_)}); }

 private:
  int fd_;
  int err_ = 0;
};

Napi::Value Syncfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "syncfs: (fd, callback)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* w = new SyncfsWorker(info[1].As<Napi::Function>(), info[0].As<Napi::Number>().Int32Value());
  w->Queue();
  return env.Undefined();
}

// ------------------------------------------------------------ kernel nbd
// The JS side is src/attach/kernel-nbd.ts. Every call that can block (a
// netlink round trip, opening a device, NBD_DO_IT) runs on a worker thread.

Napi::Error ErrnoError(Napi::Env env, const char* what, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + std::strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

// nbdSocketpair(): [fd, fd] (AF_UNIX stream, close-on-exec).
Napi::Value NbdSocketpair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  int err = torus::unix_socketpair(fds);
  if (err != 0) {
    ErrnoError(env, "socketpair", err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(uint32_t{0}, Napi::Number::New(env, fds[0]));
  out.Set(uint32_t{1}, Napi::Number::New(env, fds[1]));
  return out;
}

class NetlinkWorker : public Napi::AsyncWorker {
 public:
  NetlinkWorker(const Napi::Function& cb, const uint8_t* data, size_t len)
      : Napi::AsyncWorker(cb, "torus.netlink"), req_(data, data + len) {}
  void Execute() override { err_ = torus::netlink_transact(req_.data(), req_.size(), &reply_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Value reply = err_ == 0 ? Napi::Buffer<uint8_t>::Copy(env, reply_.data(), reply_.size()).As<Napi::Value>() : env.Null();
    Callback().Call({Napi::Number::New(env, err_), reply});
  }

 private:
  std::vector<uint8_t> req_;
  std::vector<uint8_t> reply_;
  int err_ = 0;
};

// netlinkTransact(request: Uint8Array, callback(errno, reply: Buffer | null))
Napi::Value NetlinkTransact(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "netlinkTransact: (request, callback)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array req = info[0].As<Napi::Uint8Array>();
  (new NetlinkWorker(info[1].As<Napi::Function>(), req.Data(), req.ByteLength()))->Queue();
  return env.Undefined();
}

// The ioctl path: configure the device, then NBD_DO_IT, which blocks for the
// whole life of the attachment, on this worker's thread. `onReady(errno,
// stage)` once configuring is done or failed; `onDone(errno)` when DO_IT
// returns (after a disconnect), only if onReady reported success.
class IoctlServeWorker : public Napi::AsyncProgressWorker<int> {
 public:
  IoctlServeWorker(const Napi::Function& onDone, const Napi::Function& onReady, torus::IoctlConfig cfg)
      : Napi::AsyncProgressWorker<int>(onDone, "torus.nbd-do-it"), cfg_(std::move(cfg)) {
    on_ready_ = Napi::Persistent(onReady);
  }
  void Execute(const ExecutionProgress& progress) override {
    int dev = -1;
    setup_err_ = torus::nbd_ioctl_setup(cfg_, &dev, &stage_);
    if (setup_err_ != 0) return;
    int ok = 0;
    progress.Send(&ok, 1);
    run_err_ = torus::nbd_ioctl_run(dev);
  }
  void OnProgress(const int*, size_t) override { Ready(); }
  void OnOK() override {
    Napi::Env env = Env();
    if (setup_err_ != 0) {
      on_ready_.Call({Napi::Number::New(env, setup_err_), Napi::String::New(env, stage_)});
      return;
    }
    Ready();
    Callback().Call({Napi::Number::New(env, run_err_)});
  }

 private:
  void Ready() {
    if (ready_sent_) return;
    ready_sent_ = true;
    on_ready_.Call({Napi::Number::New(Env(), 0), Napi::String::New(Env(), "")});
  }
  torus::IoctlConfig cfg_;
  Napi::FunctionReference on_ready_;
  const char* stage_ = "";
  int setup_err_ = 0;
  int run_err_ = 0;
  bool ready_sent_ = false;
};

// nbdIoctlServe(path, sockFd, sizeBytes, blockSize, flags, timeoutS, onReady, onDone)
Napi::Value NbdIoctlServe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 8 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() ||
      !info[4].IsNumber() || !info[5].IsNumber() || !info[6].IsFunction() || !info[7].IsFunction()) {
    Napi::TypeError::New(env, "nbdIoctlServe: (path, sockFd, sizeBytes, blockSize, flags, timeoutS, onReady, onDone)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  torus::IoctlConfig cfg;
  cfg.path = info[0].As<Napi::String>().Utf8Value();
  cfg.sock_fd = info[1].As<Napi::Number>().Int32Value();
  cfg.size_bytes = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  cfg.block_size = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
  cfg.flags = static_cast<uint64_t>(info[4].As<Napi::Number>().Int64Value());
  cfg.timeout_s = static_cast<uint64_t>(info[5].As<Napi::Number>().Int64Value());
  (new IoctlServeWorker(info[7].As<Napi::Function>(), info[6].As<Napi::Function>(), std::move(cfg)))->Queue();
  return env.Undefined();
}

class IoctlDisconnectWorker : public Napi::AsyncWorker {
 public:
  IoctlDisconnectWorker(const Napi::Function& cb, std::string path) : Napi::AsyncWorker(cb, "torus.nbd-disconnect"), path_(std::move(path)) {}
  void Execute() override { err_ = torus::nbd_ioctl_disconnect(path_); }
  void OnOK() override { Callback().Call({Napi::Number::New(Env(), err_)}); }

 private:
  std::string path_;
  int err_ = 0;
};

// nbdIoctlDisconnect(path, callback(errno))
Napi::Value NbdIoctlDisconnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "nbdIoctlDisconnect: (path, callback)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  (new IoctlDisconnectWorker(info[1].As<Napi::Function>(), info[0].As<Napi::String>().Utf8Value()))->Queue();
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  torus::crc32c_init();
  exports.Set("crc32c", Napi::Function::New(env, Crc32c<torus::crc32c>, "crc32c"));
  // The C++ table code even on CPUs with SSE4.2, so tests cover the fallback.
  exports.Set("crc32cPortable", Napi::Function::New(env, Crc32c<torus::crc32c_portable>, "crc32cPortable"));
  // Without carry-less folding even on CPUs that have it, so tests cover both.
  exports.Set("crc32cNoFold", Napi::Function::New(env, Crc32c<torus::crc32c_no_fold>, "crc32cNoFold"));
  exports.Set("crc32cVariant", Napi::String::New(env, torus::crc32c_variant()));
  exports.Set("crc32cPages", Napi::Function::New(env, Crc32cPages, "crc32cPages"));
  exports.Set("syncfs", Napi::Function::New(env, Syncfs, "syncfs"));
  exports.Set("addressModulo", Napi::Function::New(env, AddressModulo, "addressModulo"));
  exports.Set("threadWaits", Napi::Function::New(env, ThreadWaits, "threadWaits"));
  exports.Set("preadNowait", Napi::Function::New(env, NowaitIo<torus::pread_nowait>, "preadNowait"));
  exports.Set("readBatchNowait", Napi::Function::New(env, ReadBatchNowait, "readBatchNowait"));
  exports.Set("nbdSocketpair", Napi::Function::New(env, NbdSocketpair, "nbdSocketpair"));
  exports.Set("netlinkTransact", Napi::Function::New(env, NetlinkTransact, "netlinkTransact"));
  exports.Set("nbdIoctlServe", Napi::Function::New(env, NbdIoctlServe, "nbdIoctlServe"));
  exports.Set("nbdIoctlDisconnect", Napi::Function::New(env, NbdIoctlDisconnect, "nbdIoctlDisconnect"));
  return exports;
}

}  // namespace

NODE_API_MODULE(torus_native, Init)
