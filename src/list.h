/*
** An intrusive circular doubly linked list (as libuv's queue.h or the
** Linux list): a pf_list node lives inside each record, a pf_list head
** inside the owner. An empty head, and a node in no list, link to
** themselves, so removing a node twice is harmless.
*/
#ifndef PF_LIST_H
#define PF_LIST_H

#include <stddef.h>

typedef struct pf_list {
  struct pf_list *next, *prev;
} pf_list;

/* the record of type 'type' whose member 'field' is the node n */
#define pf_list_entry(n, type, field) \
  ((type *)(void *)((char *)(n) - offsetof(type, field)))

static inline void pf_list_init(pf_list *n) {
  n->next = n->prev = n;
}

static inline int pf_list_empty(const pf_list *h) {
  return h->next == h;
}

/* n goes before 'at': at the tail when 'at' is the head */
static inline void pf_list_insert_before(pf_list *at, pf_list *n) {
  n->next = at;
  n->prev = at->prev;
  at->prev->next = n;
  at->prev = n;
}

static inline void pf_list_push_tail(pf_list *h, pf_list *n) {
  pf_list_insert_before(h, n);
}

static inline void pf_list_push_head(pf_list *h, pf_list *n) {
  pf_list_insert_before(h->next, n);
}

static inline void pf_list_remove(pf_list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n->prev = n;
}

#endif
