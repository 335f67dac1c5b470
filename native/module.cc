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
  bool initialized = false;  // by us or by someone else in the process
  bool initializedByUs = false;
  bool serialized = false;  // initialized with NULL arguments
  CK_RV lockingRv = CKR_OK;
  std::timed_mutex serialMu;
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
  m->lockingRv = rv == CKR_CRYPTOKI_ALREADY_INITIALIZED ? CKR_OK : rv;
  bool nullArgs = false;
  // Only a refusal of the locking arguments themselves retries without them (a device error is
  // retried later with OS locking again, so a briefly absent HSM never serializes the process).
  if (rv == CKR_CANT_LOCK || rv == CKR_ARGUMENTS_BAD) {
    // NULL arguments promise the module that the application will not call it from several
    // threads at once: the engines keep that promise through serialMu.
    rv = m->f->C_Initialize(nullptr);
    nullArgs = true;
  }
  if (rv == CKR_OK) {
    m->initializedByUs = true;
    m->initialized = true;
    m->serialized = nullArgs;
  } else if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    // Someone else in this process initialized it: use it, never finalize it.
    m->initializedByUs = false;
    m->initialized = true;
    m->serialized = false;
    rv = CKR_OK;
  }
  if (rv != CKR_OK) m->lockingRv = CKR_OK;  // not initialized at all: no locking verdict yet
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
  ++m->refs;
  if (!m->initialized) {
    CK_RV rv = initialize(m);
    if (rv != CKR_OK) {
      err.rv = rv;
      err.fn = "C_Initialize";
    }
  }
  return m;
}

CK_FUNCTION_LIST_PTR moduleFunctions(Module* m) { return m->f; }

std::timed_mutex* moduleSerialMutex(Module* m) {
  std::lock_guard<std::mutex> lk(g_mu);
  return m->serialized ? &m->serialMu : nullptr;
}

CK_RV moduleLockingRv(Module* m) {
  std::lock_guard<std::mutex> lk(g_mu);
  return m->lockingRv;
}

void releaseModule(Module* m) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (m->refs <= 0) return;
  if (--m->refs == 0) {
    if (m->initializedByUs) m->f->C_Finalize(nullptr);
    m->initializedByUs = false;
    m->initialized = false;
    m->serialized = false;
  }
}

CK_RV reinitializeModule(Module* m, const char*& fn) {
  std::lock_guard<std::mutex> lk(g_mu);
  m->f->C_Finalize(nullptr);  // result irrelevant: the device is already in trouble
  m->initializedByUs = false;
  m->initialized = false;
  CK_RV rv = initialize(m);
  if (rv != CKR_OK) fn = "C_Initialize";
  return rv;
}

}  // namespace xks
