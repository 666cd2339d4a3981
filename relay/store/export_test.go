package store

// MailboxHashForTest returns the form in which mailbox id is stored under
// store key key.
func MailboxHashForTest(key []byte, id [IDSize]byte) [32]byte {
	k, err := newKeys(key)
	if err != nil {
		panic(err)
	}
	return k.hid(id)
}
