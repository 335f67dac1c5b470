#include "module.h"

#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>

namespace xks {

struct Module {
  std::string path;
  void* dl = nullptr;
  CK_FUNCTION_LIST_PTR f = nullptr;
  int refs = 0;
  bool initializedByUs = false;
};

namespace {

std::mutex g_mu;
std::map<std::string, std::unique_ptr<Module>>& registry() {
  static auto* r = new std::map<std::string, std::unique_ptr<Module>>();  // never destroyed
  return *r;
}

CK_RV initialize(Module* m) {
  CK_C_INITIALIZE_ARGS args{};
  args.CreateMutex = nullptr;
  args.DestroyMutex = nullptr;
  args.LockMutex = nullptr;
  args.UnlockMutex = nullptr;
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = nullptr;
  CK_RV rv = m->f->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    rv = m->f->C_Initialize(nullptr);
  }
  if (rv == CKR_OK) {
    m->initializedByUs = true;
  } else if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    // Someone else in this process initialized it: use it, never finalize it.
    m->initializedByUs = false;
    rv = CKR_OK;
  }
  return rv;
}

}  // namespace

Module* acquireModule(const std::string& path, LoadError& err) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto& reg = registry();
  auto it = reg.find(path);
  Module* m;
  if (it == reg.end()) {
    dlerror();
    void* dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dl == nullptr) {
      const char* e = dlerror();
      err.xks = "XKS_LOAD_FAILED";
      err.fn = "dlopen";
      err.detail = e != nullptr ? e : "unknown error";
      return nullptr;
    }
    auto getList = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
    if (getList == nullptr) {
      err.xks = "XKS_LOAD_FAILED";
      err.fn = "C_GetFunctionList";
      err.detail = "the library does not export C_GetFunctionList";
      return nullptr;
    }
    CK_FUNCTION_LIST_PTR f = nullptr;
    CK_RV rv = getList(&f);
    if (rv != CKR_OK || f == nullptr) {
      err.rv = rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
      err.fn = "C_GetFunctionList";
      return nullptr;
    }
    auto owned = std::make_unique<Module>();
    owned->path = path;
    owned->dl = dl;
    owned->f = f;
    m = owned.get();
    reg.emplace(path, std::move(owned));
  } else {
    m = it->second.get();
  }
  if (m->refs == 0) {
    CK_RV rv = initialize(m);
    if (rv != CKR_OK) {
      err.rv = rv;
      err.fn = "C_Initialize";
      return nullptr;
    }
  }
  ++m->refs;
  return m;
}

CK_FUNCTION_LIST_PTR moduleFunctions(Module* m) { return m->f; }

void releaseModule(Module* m) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (m->refs <= 0) return;
  if (--m->refs == 0 && m->initializedByUs) {
    m->f->C_Finalize(nullptr);
    m->initializedByUs = false;
  }
}

CK_RV reinitializeModule(Module* m, const char*& fn) {
  std::lock_guard<std::mutex> lk(g_mu);
  m->f->C_Finalize(nullptr);  // result irrelevant: the device is already in trouble
  m->initializedByUs = false;
  CK_RV rv = initialize(m);
  if (rv != CKR_OK) fn = "C_Initialize";
  return rv;
}

}  // namespace xks
