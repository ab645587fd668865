package wire

// InputError is input the caller must fix. Its message names the field and
// says what is wrong; it never quotes the value, which may be a secret.
// Callers detect it with errors.As and answer 400 with Error() as it is.
type InputError struct {
	Field  string // the request field at fault: "ciphertext", "jwk"...
	Reason string // what is wrong with it, without the field's name
	// part: the reason is about a part of the field ("jwk: crv ..."), not
	// the field as a whole ("jwk is not valid JSON").
	part bool
	// err is what a library said, for errors.Is and logs; never shown to
	// the caller, as it may quote the input.
	err error
}

func (e *InputError) Unwrap() error { return e.err }

func (e *InputError) Error() string {
	switch {
	case e.Field == "":
		return e.Reason
	case e.part:
		return e.Field + ": " + e.Reason
	}
	return e.Field + " " + e.Reason
}

// UserMessage is what the caller is told: the root's responders answer
// any error that has one with a 400.
func (e *InputError) UserMessage() string { return e.Error() }

// fieldError is a reason about the field as a whole: "<field> <reason>".
func fieldError(field, reason string) *InputError {
	return &InputError{Field: field, Reason: reason}
}

// partError is a reason about a part of the field: "<field>: <reason>".
func partError(field, reason string) *InputError {
	return &InputError{Field: field, Reason: reason, part: true}
}
