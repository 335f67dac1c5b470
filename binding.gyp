{
  "variables": {
    "p11kit_include%": "/usr/include/p11-kit-1",
    "xks_test_tools%": "<!(node -p \"+require('fs').existsSync('native-test')\")"
  },
  "targets": [
    {
      "target_name": "xks_pkcs11",
      "sources": [
        "native/addon.cc",
        "native/engine.cc",
        "native/iv_buffer.cc",
        "native/iv_check.cc",
        "native/key_cache.cc",
        "native/module.cc",
        "native/module_link.cc",
        "native/names.cc",
        "native/op_create_key.cc",
        "native/op_decrypt.cc",
        "native/op_encrypt.cc",
        "native/op_hmac.cc",
        "native/op_key_info.cc",
        "native/op_random.cc",
        "native/op_token_info.cc",
        "native/registry.cc",
        "native/sessions.cc",
        "native/status.cc",
        "native/workers.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<(p11kit_include)"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "libraries": ["-ldl", "-lpthread"],
      # Never unmapped: Node dlcloses a worker thread's addons when it ends, and a PKCS#11 call
      # stuck past the deadline returns into this code later.
      "ldflags": ["-Wl,-z,nodelete"],
      "configurations": {
        "Release": {
        "cflags!": ["-O3"],
        "cflags_cc!": ["-O3"],
        "cflags": ["-O2"],
        "cflags_cc": ["-O2"]
        }
      }
    },
    {
      # The audit trail's writer thread. Its SHA-256 is the OpenSSL inside node (as xks_tls).
      "target_name": "xks_audit",
      "sources": [
        "native/audit/addon.cc",
        "native/audit/log.cc"
      ],
      "include_dirs": [
        "<(node_root_dir)/include/node",
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "libraries": ["-lpthread"],
      # Never unmapped while its thread may run (a worker thread's end dlcloses its addons).
      "ldflags": ["-Wl,-z,nodelete"],
      "configurations": {
        "Release": {
        "cflags!": ["-O3"],
        "cflags_cc!": ["-O3"],
        "cflags": ["-O2"],
        "cflags_cc": ["-O2"]
        }
      }
    },
    {
      # The mTLS terminator. It uses the OpenSSL inside node (node exports its symbols): node's own
      # headers come first on the include path, and no -lssl/-lcrypto (two OpenSSLs in one process).
      "target_name": "xks_tls",
      "sources": [
        "native/tls/addon.cc",
        "native/tls/proxy_header.cc",
        "native/tls/terminator.cc",
        "native/tls/tls_context.cc",
        "native/tls/verify_names.cc"
      ],
      "include_dirs": [
        "<(node_root_dir)/include/node",
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "libraries": ["-lpthread"],
      "configurations": {
        "Release": {
        "cflags!": ["-O3"],
        "cflags_cc!": ["-O3"],
        "cflags": ["-O2"],
        "cflags_cc": ["-O2"]
        }
      }
    }
  ],
  "conditions": [
    # The test tools (the fault-injecting PKCS#11 module, the attribute reader) are built only in a
    # checkout: native-test/ is not in the npm package, so an install builds the two addons only.
    ["xks_test_tools==1", {
      "targets": [
        {
          "target_name": "faulty_pkcs11",
          "type": "loadable_module",
          "product_extension": "so",
          "sources": ["native-test/faulty/faulty_pkcs11.c"],
          "include_dirs": ["<(p11kit_include)"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
          "libraries": ["-ldl", "-lpthread"]
        },
        {
          "target_name": "p11attr",
          "type": "executable",
          "sources": ["native-test/p11attr/p11attr.c"],
          "include_dirs": ["<(p11kit_include)"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
          "libraries": ["-ldl"]
        }
      ]
    }]
  ]
}
