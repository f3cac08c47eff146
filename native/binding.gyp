# Native helpers for torus, built by `npm run build` (node-gyp, against the
# installed Node headers). One addon, `torus_native`, so torusd loads one
# file; each concern keeps its own source file under src/.
{
  "targets": [
    {
      "target_name": "torus_native",
      "sources": [
        "src/addon.cc",
        "src/crc32c.cc",
        "src/nowait-io.cc",
        "src/read-batch.cc",
        "src/kernel-nbd.cc"
      ],
      # node_addon_api (not _except): the addon reports errors as pending JS
      # exceptions and is compiled without C++ exception support.
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-O3", "-std=c++17", "-Wall", "-Wextra"],
      "xcode_settings": {
        "OTHER_CPLUSPLUSFLAGS": ["-O3", "-std=c++17"]
      }
    }
  ]
}
