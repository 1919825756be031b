/*
** pf.serialize / pf.deserialize (serial.c): Lua values to a versioned,
** checksummed binary blob and back. Layer 0: only the Lua C API.
*/
#ifndef PF_SERIAL_H
#define PF_SERIAL_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#define PF_SERIAL_VERSION 1
#define PF_SERIAL_MAXDEPTH 1000   /* tables nested in tables, root included */

/* Adds serialize and deserialize to the table on top of the stack. */
void pf_open_serial(lua_State *L);

/* CRC-32 (IEEE 802.3, the one of zlib and PNG), sliced by 8: fill the
** tables once, then crc = pf_crc32(&tab, 0, p, n) and continue with the
** returned value over the next bytes. */
typedef struct pf_crc_tables { uint32_t t[8][256]; } pf_crc_tables;
void pf_crc32_init(pf_crc_tables *tab);
uint32_t pf_crc32(const pf_crc_tables *tab, uint32_t crc,
                  const unsigned char *p, size_t n);

#endif
