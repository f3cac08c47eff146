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

#include <cerrno>
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  torus::crc32c_init();
  exports.Set("crc32c", Napi::Function::New(env, Crc32c<torus::crc32c>, "crc32c"));
  // The C++ table code even on CPUs with SSE4.2, so tests cover the fallback.
  exports.Set("crc32cPortable", Napi::Function::New(env, Crc32c<torus::crc32c_portable>, "crc32cPortable"));
  exports.Set("crc32cVariant", Napi::String::New(env, torus::crc32c_variant()));
  exports.Set("crc32cPages", Napi::Function::New(env, Crc32cPages, "crc32cPages"));
  exports.Set("syncfs", Napi::Function::New(env, Syncfs, "syncfs"));
  exports.Set("preadNowait", Napi::Function::New(env, NowaitIo<torus::pread_nowait>, "preadNowait"));
  return exports;
}

}  // namespace

NODE_API_MODULE(torus_native, Init)
