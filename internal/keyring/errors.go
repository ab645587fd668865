package keyring

import "fmt"

// UserError is a failure the caller caused and can fix: the layers under
// the handlers return it, and the handlers' one responder answers it with
// a 400 carrying its message. The message never holds the submitted value.
type UserError struct {
	// Field names the request field at fault, when one is.
	Field string
	// Reason says what is wrong and what to do.
	Reason string
}

func (e *UserError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// UserMessage is what the caller is told; every layer's input error has
// one, and the responder asks for nothing else.
func (e *UserError) UserMessage() string { return e.Error() }

// Userf makes a UserError with no field.
func Userf(format string, args ...interface{}) error {
	return &UserError{Reason: fmt.Sprintf(format, args...)}
}

// FieldErrorf makes a UserError about one field.
func FieldErrorf(field, format string, args ...interface{}) error {
	return &UserError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
