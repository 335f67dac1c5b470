/*
 * Test tool: sets CKA_ENCRYPT and CKA_DECRYPT of the token secret key with a given label,
 * from a process of its own, as an HSM administrator would disable (or re-enable) a key.
 * Built by `npm run build:native` (binding.gyp) to build/Release/p11attr. Never shipped.
 *
 *   p11attr MODULE PIN LABEL ENCRYPT(0|1) DECRYPT(0|1)
 *
 * Exit 0 on success; otherwise 1 with the failing function and CKR code (hex) on stderr.
 */
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <stdio.h>
#include <string.h>

static int fail(const char* fn, CK_RV rv) {
  fprintf(stderr, "p11attr: %s failed: 0x%lx\n", fn, (unsigned long)rv);
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: p11attr MODULE PIN LABEL ENCRYPT(0|1) DECRYPT(0|1)\n");
    return 2;
  }
  void* dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    fprintf(stderr, "p11attr: cannot load the module\n");
    return 1;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR f = NULL;
  CK_RV rv;
  if (get == NULL || (rv = get(&f)) != CKR_OK) return fail("C_GetFunctionList", get == NULL ? CKR_GENERAL_ERROR : rv);
  CK_C_INITIALIZE_ARGS init;
  memset(&init, 0, sizeof init);
  init.flags = CKF_OS_LOCKING_OK;
  if ((rv = f->C_Initialize(&init)) != CKR_OK) return fail("C_Initialize", rv);
  /* The first slot with a token, as the proxy picks it. */
  CK_SLOT_ID slots[64];
  CK_ULONG nslots = 64;
  if ((rv = f->C_GetSlotList(CK_TRUE, slots, &nslots)) != CKR_OK) return fail("C_GetSlotList", rv);
  if (nslots == 0) return fail("C_GetSlotList", CKR_TOKEN_NOT_PRESENT);
  CK_SLOT_ID slot = slots[0];
  CK_SESSION_HANDLE s;
  if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s)) != CKR_OK)
    return fail("C_OpenSession", rv);
  if ((rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[2], strlen(argv[2]))) != CKR_OK) return fail("C_Login", rv);
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_LABEL, argv[3], strlen(argv[3])},
      {CKA_TOKEN, &yes, sizeof yes},
  };
  if ((rv = f->C_FindObjectsInit(s, tmpl, 3)) != CKR_OK) return fail("C_FindObjectsInit", rv);
  CK_OBJECT_HANDLE key[2];
  CK_ULONG found = 0;
  rv = f->C_FindObjects(s, key, 2, &found);
  f->C_FindObjectsFinal(s);
  if (rv != CKR_OK) return fail("C_FindObjects", rv);
  if (found != 1) {
    fprintf(stderr, "p11attr: %lu keys with that label\n", (unsigned long)found);
    return 1;
  }
  CK_BBOOL enc = argv[4][0] == '1' ? CK_TRUE : CK_FALSE;
  CK_BBOOL dec = argv[5][0] == '1' ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE set[] = {{CKA_ENCRYPT, &enc, sizeof enc}, {CKA_DECRYPT, &dec, sizeof dec}};
  if ((rv = f->C_SetAttributeValue(s, key[0], set, 2)) != CKR_OK) return fail("C_SetAttributeValue", rv);
  f->C_Logout(s);
  f->C_CloseSession(s);
  f->C_Finalize(NULL);
  return 0;
}
